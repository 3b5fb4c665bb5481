"""hal waits for its subprocesses with pidfds: no thread per subprocess (the daemon and the CLI)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hal9999.children import pidfd_child_watcher, pidfds_work
from hal9999.config import HalConfig
from hal9999.server.daemon import Daemon

pytestmark = pytest.mark.skipif(
    sys.version_info >= (3, 12) or not pidfds_work(),
    reason="Python 3.12 waits with pidfds itself; this kernel has no pidfd_open",
)


async def exit_codes(count: int) -> list[int]:
    """Exit codes of ``count`` shells started at once, each exiting with its own number."""

    async def one(code: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f"exit {code}", stdout=asyncio.subprocess.PIPE
        )
        await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode

    return list(await asyncio.gather(*(one(code) for code in range(count))))


def waiter_threads() -> list[str]:
    # asyncio's ThreadedChildWatcher names its threads "waitpid-<n>".
    return [t.name for t in threading.enumerate() if t.name.startswith("waitpid-")]


async def test_subprocesses_end_with_their_codes_and_no_waiter_thread() -> None:
    started: list[str] = []
    original = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    with pidfd_child_watcher() as used:
        assert used
        threading.Thread.start = counting_start  # type: ignore[method-assign]
        try:
            codes = await exit_codes(20)
        finally:
            threading.Thread.start = original  # type: ignore[method-assign]
    assert codes == list(range(20))
    assert [name for name in started if name.startswith("waitpid-")] == []
    assert waiter_threads() == []


async def test_a_loop_in_a_worker_thread_waits_for_its_own_children() -> None:
    # A submission creates its task on a loop of its own in a worker thread.
    with pidfd_child_watcher():
        codes = await asyncio.to_thread(asyncio.run, exit_codes(5))
        assert codes == list(range(5))
        assert await exit_codes(3) == [0, 1, 2]  # and the daemon's loop still does


async def test_the_watcher_before_is_put_back() -> None:
    before = asyncio.get_event_loop_policy().get_child_watcher()
    with pidfd_child_watcher():
        assert asyncio.get_event_loop_policy().get_child_watcher() is not before
    assert asyncio.get_event_loop_policy().get_child_watcher() is before
    assert await exit_codes(2) == [0, 1]


async def test_the_daemon_serves_with_the_pidfd_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(HalConfig(home=tmp_path / "home"), {})
    seen: dict[str, Any] = {}

    async def start() -> None:
        seen["watcher"] = type(asyncio.get_event_loop_policy().get_child_watcher()).__name__
        daemon.stopping.set()

    async def stop() -> None:
        daemon.store.close()

    monkeypatch.setattr(daemon, "start", start)
    monkeypatch.setattr(daemon, "stop", stop)
    await daemon.serve_forever()
    assert seen["watcher"] == "LoopPidfdWatcher"
    assert type(asyncio.get_event_loop_policy().get_child_watcher()).__name__ != (
        "LoopPidfdWatcher"
    )


def test_the_cli_runs_its_async_core_with_the_pidfd_watcher() -> None:
    # An in-process `hal run`, `hal pool`, `hal image` go through run_async.
    from hal9999.cli.main import run_async

    started: list[str] = []
    original = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    async def watched() -> tuple[str, list[int]]:
        watcher = asyncio.get_event_loop_policy().get_child_watcher()
        return type(watcher).__name__, await exit_codes(10)

    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        name, codes = run_async(watched())
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]
    assert (name, codes) == ("LoopPidfdWatcher", list(range(10)))
    assert [n for n in started if n.startswith("waitpid-")] == []
    assert type(asyncio.get_event_loop_policy().get_child_watcher()).__name__ != (
        "LoopPidfdWatcher"
    )
