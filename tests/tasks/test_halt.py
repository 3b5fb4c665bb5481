"""Stopping or cancelling a task from outside its runner, under a pool (the daemon's case)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hal9999.config import HalConfig
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.pool.pool import Entry
from hal9999.store import Store
from hal9999.tasks.plugins import load_provider_for
from hal9999.tasks.sandboxes import PoolSource
from hal9999.tasks.service import RunRequest, TaskService


def git_repo(path: Path) -> Path:
    path.mkdir()
    (path / "README").write_text("hello\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "initial"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    return path


@pytest.mark.parametrize("halt", ["cancel", "stop"])
async def test_a_halted_tasks_sandbox_is_destroyed_not_handed_to_the_next_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, halt: str
) -> None:
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.invalid")
    home = tmp_path / "home"
    config = HalConfig(home=home)
    store = Store.open(home)
    service = TaskService(config, store, {})
    bwrap = load_provider_for(config, "bwrap")
    pool = WarmPool(
        providers=lambda name: bwrap,
        settings=lambda name: ProviderSettings(),  # bwrap's policy: reset and reuse
        slots=SlotDir(home / "pool"),
        store=store,
    )
    service.runner.sandboxes = PoolSource(pool)
    states: list[tuple[str | None, str]] = []
    record = pool._record

    def recording(entry: Entry, **changes: Any) -> None:
        record(entry, **changes)
        states.append((entry.id, entry.state))

    monkeypatch.setattr(pool, "_record", recording)
    request = RunRequest(
        prompt="wait", repo=str(git_repo(tmp_path / "repo")), ref=None, agent="sleep 30",
        provider="bwrap", process_manager="direct", timeout_s=None,
    )  # fmt: skip
    task = await service.create(request)
    run = asyncio.create_task(service.run(task.id))
    deadline = time.monotonic() + 30
    while store.get_task(task.id).status != "running":
        assert time.monotonic() < deadline and not run.done(), store.get_task(task.id)
        await asyncio.sleep(0.02)
    sandbox_id = store.get_task(task.id).sandbox_id
    assert sandbox_id is not None

    halted = await (service.cancel(task.id) if halt == "cancel" else service.stop(task.id))
    result = await asyncio.wait_for(run, 30)

    assert halted.status == result.status == {"cancel": "cancelled", "stop": "stopped"}[halt]
    # Straight from the task to destroyed: never reset, never idle for another task.
    assert [state for sid, state in states if sid == sandbox_id] == ["leased", "destroying"]
    assert sandbox_id not in [info.id for info in await bwrap.list()]
    assert store.list_sandboxes() == []
    assert pool.entries == []
