"""The sweep of what runs killed after their final status left (tasks/deadruns.py): only a
final task's sandbox, only with its runner dead, never a pool's, one sweeper at a time."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path
from typing import Any

import pytest
from tests.support.store import make_task

from hal9999.store import Store
from hal9999.store.sandboxrow import SandboxRow
from hal9999.tasks import deadruns

DEAD = 2**22 + 7  # above pid_max's default: no process has it


class Recording:
    def __init__(self) -> None:
        self.destroyed: list[str] = []

    async def destroy(self, sandbox_id: str) -> None:
        self.destroyed.append(sandbox_id)


def providing(provider: Any) -> Any:
    """The service's plugins, giving ``provider`` whatever its name."""
    return types.SimpleNamespace(provider=lambda name: provider)


def _live_runner() -> subprocess.Popen[bytes]:
    """A live process that passes for a hal runner ("hal" in its command line)."""
    return subprocess.Popen(["hal-live-runner", "60"], executable="/bin/sleep")


async def test_only_a_final_tasks_sandbox_with_its_runner_dead_and_no_pools_is_destroyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = Recording()
    live = _live_runner()
    store = Store.open(tmp_path / "home")
    try:
        tasks = {  # task -> (status, sandbox, runner)
            "killed": ("failed", "s1", DEAD),
            "ending": ("succeeded", "s2", live.pid),  # a live run between its end and destroy
            "pooled": ("failed", "s3", DEAD),
            "adoptable": ("interrupted", "s4", DEAD),
            "inflight": ("running", "s5", DEAD),
            "nobody": ("cancelled", "s6", None),
        }
        for task_id, (status, sandbox, runner) in tasks.items():
            store.insert_task(
                make_task(task_id, status=status, sandbox_id=sandbox, runner_pid=runner)
            )
        store.put_sandbox(SandboxRow(provider="bwrap", id="s3", pool_key="k", state="leased",
                                     task_id="pooled", created_at=1.0,
                                     last_used_at=1.0))  # fmt: skip
        service = types.SimpleNamespace(
            store=store, config=types.SimpleNamespace(credentials=()), plugins=providing(provider)
        )
        swept = await deadruns.sweep(service)  # type: ignore[arg-type]
        assert sorted(swept) == ["bwrap:s1", "bwrap:s6"]
        assert sorted(provider.destroyed) == ["s1", "s6"]  # never the pool's s3
        after = {t: (store.get_task(t).sandbox_id, store.get_task(t).runner_pid) for t in tasks}
        assert after == {
            "killed": (None, None),
            "ending": ("s2", live.pid),
            "pooled": (None, None),  # its daemon's pool keeps the sandbox; the link goes
            "adoptable": ("s4", DEAD),
            "inflight": ("s5", DEAD),
            "nobody": (None, None),
        }
        assert await deadruns.sweep(service) == []  # type: ignore[arg-type]
        assert deadruns.owed(store) == []  # s2's runner lives: not owed, only held
    finally:
        store.close()
        live.kill()
        live.wait()


async def test_a_task_another_process_claimed_first_is_left_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = Recording()
    store = Store.open(tmp_path / "home")
    try:
        store.insert_task(make_task("killed", status="failed", sandbox_id="s1", runner_pid=DEAD))
        original = store.swap_runner

        def raced(task_id: str, seen: int | None, new: int | None) -> object:
            original(task_id, seen, DEAD + 1)  # a resume (or a second sweeper) got there first
            return original(task_id, seen, new)

        monkeypatch.setattr(store, "swap_runner", raced)
        service = types.SimpleNamespace(
            store=store, config=types.SimpleNamespace(credentials=()), plugins=providing(provider)
        )
        assert await deadruns.sweep(service) == []  # type: ignore[arg-type]
        assert provider.destroyed == []
    finally:
        store.close()


async def test_a_destroy_that_fails_is_logged_and_tried_again_by_the_next_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Failing(Recording):
        async def destroy(self, sandbox_id: str) -> None:
            raise PermissionError(13, "Permission denied", sandbox_id)

    provider = Failing()
    store = Store.open(tmp_path / "home")
    try:
        store.insert_task(make_task("killed", status="failed", sandbox_id="s1", runner_pid=DEAD))
        service = types.SimpleNamespace(
            store=store, config=types.SimpleNamespace(credentials=()), plugins=providing(provider)
        )
        assert await deadruns.sweep(service) == []  # type: ignore[arg-type]  # no raise
        record = store.get_task("killed")
        assert (record.sandbox_id, record.runner_pid) == ("s1", None)  # owed still
        assert [row[0] for row in deadruns.owed(store)] == ["killed"]
    finally:
        store.close()


async def test_a_daemons_start_takes_out_credentials_only_of_tasks_at_rest_and_unclaimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _live_runner()
    store = Store.open(tmp_path / "home")
    removed: list[str] = []
    monkeypatch.setattr(deadruns, "_remove_credentials", lambda service, task: removed.append(task))
    try:
        tasks = {  # task -> (status, runner)
            "final": ("succeeded", None),
            "interrupted": ("interrupted", None),
            "resumed": ("interrupted", live.pid),  # a resume took it: its run's files
            "requeued": ("queued", None),  # its next run installs and removes them
            "adopted": ("running", None),
        }
        for task_id, (status, runner) in tasks.items():
            store.insert_task(make_task(task_id, status=status, runner_pid=runner))
        service = types.SimpleNamespace(store=store, config=types.SimpleNamespace(credentials=[1]))
        owed = [*tasks, "gone"]
        swept = await deadruns.take_out_credentials(service, owed)  # type: ignore[arg-type]
        assert swept == ["final", "interrupted"]
        assert sorted(removed) == ["final", "interrupted"]
        runners = {t: store.get_task(t).runner_pid for t in tasks}
        assert runners == {t: r for t, (_, r) in tasks.items()}  # claims given back
        service.config.credentials = []
        assert await deadruns.take_out_credentials(service, owed) == []  # type: ignore[arg-type]
    finally:
        live.kill()
        live.wait()
        store.close()
