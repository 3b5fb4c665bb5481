"""Stopping or cancelling a task from outside its runner, under a pool (the daemon's case)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import git_repo, pooled_service

from hal9999.pool.pool import Entry
from hal9999.tasks.request import RunRequest
from hal9999.tasks.sandboxes import PoolSource


@pytest.mark.parametrize("halt", ["cancel", "stop"])
async def test_a_halted_tasks_sandbox_is_destroyed_not_handed_to_the_next_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, halt: str
) -> None:
    home = tmp_path / "home"
    store, service, bwrap, pool = pooled_service(home, "bwrap")  # bwrap's policy: reset
    service.runner.sandboxes = PoolSource(pool)
    states: list[tuple[str | None, str]] = []
    record = pool._record

    async def recording(entry: Entry, **changes: Any) -> None:
        await record(entry, **changes)
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


def queued_service(tmp_path: Path) -> tuple[Any, Any, list[str]]:
    """A service over a fresh home whose ``kill`` (process manager stop, label scan,
    destroy) is recorded instead of done."""
    from hal9999.config import HalConfig
    from hal9999.store import Store
    from hal9999.tasks.service import TaskService

    home = tmp_path / "home"
    store = Store.open(home)
    service = TaskService(HalConfig(home=home), store, {})
    killed: list[str] = []

    async def kill(task: Any) -> None:
        killed.append(task.id)

    service.kill = kill  # type: ignore[method-assign]
    return store, service, killed


@pytest.mark.parametrize("halt", ["cancel", "stop"])
async def test_halting_a_task_queued_for_its_first_run_looks_for_no_sandbox(
    tmp_path: Path, halt: str
) -> None:
    from tests.support.tasks import make_task

    from hal9999.events.reader import read_events

    store, service, killed = queued_service(tmp_path)
    # Just queued: not yet claimed by a runner, so nothing reconciles it away.
    store.insert_task(make_task(tmp_path / "home", "q1", "queued", created_at=time.time()))

    halted = await (service.cancel("q1") if halt == "cancel" else service.stop("q1"))

    assert killed == []
    assert (
        halted.status
        == store.get_task("q1").status
        == {"cancel": "cancelled", "stop": "stopped"}[halt]
    )
    assert [e.type for e in read_events(service.session(halted).events)][-2:] == [
        "phase", "task_end"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "ran",
    [{"resumes": 1}, {"agent_retries": 1}, {"infra_retries": 1}, {"sandbox_id": "sb1"},
     {"started_at": 1.0}],
)  # fmt: skip
async def test_halting_a_queued_task_that_ran_before_still_looks_for_its_sandboxes(
    tmp_path: Path, ran: dict[str, Any]
) -> None:
    from tests.support.tasks import make_task

    store, service, killed = queued_service(tmp_path)
    store.insert_task(make_task(tmp_path / "home", "q2", "queued", created_at=time.time(), **ran))

    await service.cancel("q2")

    assert killed == ["q2"]  # a crashed earlier run may have left a labelled sandbox


async def test_halting_a_task_that_left_the_queue_stops_it(tmp_path: Path) -> None:
    from tests.support.tasks import make_task

    store, service, killed = queued_service(tmp_path)
    store.insert_task(make_task(tmp_path / "home", "p1", "provisioning"))

    await service.cancel("p1")

    assert killed == ["p1"]
