"""A daemon's shutdown (SIGTERM: the run detached, then cancelled) that reaches a run between
its ``running`` and its agent's start still starts the agent, for the next daemon to adopt;
one that reaches it before ``running`` starts nothing (the next daemon queues it again).

Found by the CLI test ``test_sigterm_leaves_agents_running_and_restart_adopts`` polling
faster: the task was left ``running`` with no agent, and the next daemon could only
mark it interrupted."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import git_repo, pooled_service

from hal9999.process.tmux import TmuxProcessManager
from hal9999.spec import ArgvCommand
from hal9999.store import Store
from hal9999.tasks.context import process_spec
from hal9999.tasks.request import RunRequest
from hal9999.tasks.session import Session

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

AGENT = "sh -c ': > started; sleep 30'"


async def shut_down_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str) -> Any:
    """A run of :data:`AGENT` detached and cancelled as the store writes status ``at``; the
    task, its spec, and the run's outcome."""
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    request = RunRequest(
        prompt="p", repo=str(repo), ref=None, agent=AGENT, provider="bwrap",
        process_manager="tmux", timeout_s=60,
    )  # fmt: skip
    task = await service.create(request)
    loop = asyncio.get_running_loop()
    run = asyncio.create_task(service.run(task.id))
    real_set = Store.set_status

    def shut_down() -> None:
        service.detach(task.id)  # as Scheduler.shutdown: detach, then cancel
        run.cancel()

    def set_status(self: Store, task_id: str, target: str, **k: Any) -> Any:
        if at == "running, mid-write" and target == "running":
            # The cancel reaches the run while the move's thread is still writing (a busy
            # disk's fsync): what the store holds once the write is done decides.
            loop.call_soon_threadsafe(shut_down)
            time.sleep(0.5)
        written = real_set(self, task_id, target, **k)
        if target == at:  # in the move's thread: the cancel meets its hop
            loop.call_soon_threadsafe(shut_down)
        return written

    monkeypatch.setattr(Store, "set_status", set_status)
    with pytest.raises(asyncio.CancelledError):
        await run
    monkeypatch.undo()
    now = store.get_task(task.id)
    store.close()
    return now, process_spec(now, Session(Path(now.session_dir)), ArgvCommand(argv=("true",)))


@pytest.mark.parametrize("at", ["running", "running, mid-write"])
async def test_a_shutdown_after_running_is_written_starts_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    # "mid-write": a CI-way run found a task `running` whose pane's supervisor had
    # seen its go end unwritten (`.exit-0.unstarted`) after a SIGTERM; the launch had read
    # the store before the move's thread wrote `running`, and stopped the pane.
    task, spec = await shut_down_at(tmp_path, monkeypatch, at)
    assert task.status == "running"
    workspace = Session(Path(task.session_dir)).workspace
    manager = TmuxProcessManager()
    try:
        for _ in range(200):  # the agent's first act, when it started
            if (workspace / "started").exists():
                break
            await asyncio.sleep(0.05)
        assert (workspace / "started").exists(), "the agent never started"
        assert (await manager.status(spec)).state == "running"  # for the next daemon
    finally:
        await manager.stop(spec)
    assert task.sandbox_id, "its sandbox is kept for the adoption"


async def test_a_shutdown_before_running_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, spec = await shut_down_at(tmp_path, monkeypatch, "preparing")
    assert task.status == "preparing"  # the next daemon queues it again (tests/tasks/test_recovery)
    assert not (Session(Path(task.session_dir)).workspace / "started").exists()
    assert (await TmuxProcessManager().status(spec)).state == "missing"
    assert os.path.exists(task.session_dir)
