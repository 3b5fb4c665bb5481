"""``Scheduler.dispatch`` reads only as many queued rows as there are free slots
(not a multiple of them at every wake-up: docs/scale.md)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import git_repo, make_task, pooled_service, setup, trivial_request, until

from hal9999.store import Store, TaskRecord
from hal9999.tasks.api import LocalTaskAPI


def count_rows(store: Store) -> list[int]:
    """Spy on the queue reads: the number of rows each read returned."""
    reads: list[int] = []
    real = store.queued_tasks

    def counted(now: float, **kwargs: Any) -> list[TaskRecord]:
        rows = real(now, **kwargs)
        reads.append(len(rows))
        return rows

    store.queued_tasks = counted  # type: ignore[method-assign]
    return reads


async def test_dispatch_reads_as_many_rows_as_free_slots(tmp_path: Path) -> None:
    store, service, scheduler = setup(tmp_path, {"fake": 100}, max_concurrent=16)
    for n in range(100):
        store.insert_task(make_task(tmp_path, f"q{n:03d}aaaa", "queued", created_at=n))
    reads = count_rows(store)
    assert scheduler.dispatch() == 16
    assert reads == [16], "one read of 16 rows, not 4 x 16"
    assert sorted(scheduler.running) == [f"q{n:03d}aaaa" for n in range(16)]
    assert scheduler.dispatch() == 0 and reads == [16], "no free slot: no read at all"
    await until(lambda: len(service.started) == 16)
    service.gate("q000aaaa").set()
    await until(lambda: len(scheduler.running) == 15)
    assert scheduler.dispatch() == 1
    assert reads == [16, 1], "one free slot: one row"
    assert "q016aaaa" in scheduler.running
    for task_id in list(scheduler.running):
        service.gate(task_id).set()
    await until(lambda: not scheduler.running)
    await scheduler.shutdown()


async def test_rows_that_cannot_start_widen_the_read_in_queue_order(tmp_path: Path) -> None:
    # The first rows want a full provider; the ones behind them must still start.
    store, service, scheduler = setup(tmp_path, {"fake": 1, "local": 5}, max_concurrent=4)
    for n in range(6):
        store.insert_task(make_task(tmp_path, f"f{n}aaaaaa", "queued", created_at=n))
    for n in range(3):
        store.insert_task(
            make_task(tmp_path, f"l{n}aaaaaa", "queued", created_at=10 + n, provider="local")
        )
    reads = count_rows(store)
    assert scheduler.dispatch() == 4
    assert sorted(scheduler.running) == ["f0aaaaaa", "l0aaaaaa", "l1aaaaaa", "l2aaaaaa"]
    assert reads == [4, 8, 9], "pages of 4, then 8, then the rest of the queue"
    for task_id in list(scheduler.running):
        service.gate(task_id).set()
    await until(lambda: not scheduler.running)
    await scheduler.shutdown()


async def test_a_started_run_still_queued_in_the_store_is_not_started_twice(
    tmp_path: Path,
) -> None:
    limits = {"fake": 1}
    store, service, scheduler = setup(tmp_path, limits, max_concurrent=3)
    for n in range(5):
        store.insert_task(make_task(tmp_path, f"s{n}aaaaaa", "queued", created_at=n))
    assert scheduler.dispatch() == 1
    limits["fake"] = 10
    # s0's run has not run yet, so its row is still `queued`: the page of two free slots
    # holds it, and the read widens to start s1 and s2, each once.
    reads = count_rows(store)
    assert scheduler.dispatch() == 2
    assert reads == [2, 4]
    assert sorted(scheduler.running) == ["s0aaaaaa", "s1aaaaaa", "s2aaaaaa"]
    await until(lambda: len(service.started) == 3)
    assert sorted(service.started) == ["s0aaaaaa", "s1aaaaaa", "s2aaaaaa"]
    for task_id in list(scheduler.running):
        service.gate(task_id).set()
    await until(lambda: not scheduler.running)
    await scheduler.shutdown()


async def test_running_counts_per_provider_follow_starts_and_ends(tmp_path: Path) -> None:
    store, service, scheduler = setup(tmp_path, {"fake": 2, "local": 2}, max_concurrent=10)
    for n in range(3):
        store.insert_task(
            make_task(tmp_path, f"c{n}aaaaaa", "queued", created_at=n, providers=["fake", "local"])
        )
    assert scheduler.dispatch() == 3
    assert (scheduler.on_provider("fake"), scheduler.on_provider("local")) == (2, 1)
    await until(lambda: len(service.started) == 3)
    service.gate("c0aaaaaa").set()
    await until(lambda: len(scheduler.running) == 2)
    assert (scheduler.on_provider("fake"), scheduler.on_provider("local")) == (1, 1)
    for task_id in list(scheduler.running):
        service.gate(task_id).set()
    await until(lambda: not scheduler.running)
    assert (scheduler.on_provider("fake"), scheduler.on_provider("local")) == (0, 0)
    await scheduler.shutdown()


def test_the_queue_read_uses_the_index_order_not_a_sort(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    plan = store._query(  # the exact statement of Store.queued_tasks
        "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE status = 'queued' AND"
        " (not_before IS NULL OR not_before <= ?)"
        " ORDER BY priority DESC, created_at ASC, rowid ASC LIMIT ?",
        (0.0, 16),
    )
    steps = [str(row[3]) for row in plan]
    assert any("tasks_queue_order" in step for step in steps), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps


async def test_a_queued_task_another_live_hal_runs_is_not_started(tmp_path: Path) -> None:
    # An in-process `hal run` creates its task queued and takes it from there a moment later:
    # a daemon on the same home dispatching in that moment took it too, and the loser's
    # "a provisioning task cannot become provisioning" failed the task (seen in CI).
    store, service, scheduler = setup(tmp_path, {"fake": 10}, max_concurrent=4)
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", "hal-in-process-run"
    )
    try:
        store.insert_task(make_task(tmp_path, "heldaaaa", "queued", runner_pid=other.pid))
        store.insert_task(make_task(tmp_path, "mineaaaa", "queued", runner_pid=os.getpid()))
        store.insert_task(make_task(tmp_path, "freeaaaa", "queued"))
        assert scheduler.dispatch() == 2
        assert sorted(scheduler.running) == ["freeaaaa", "mineaaaa"]
    finally:
        other.kill()
        await other.wait()
    # Its runner gone, the task is the daemon's like any other queued one.
    assert scheduler.dispatch() == 1 and "heldaaaa" in scheduler.running
    for task_id in list(scheduler.running):
        service.gate(task_id).set()
    await until(lambda: not scheduler.running)
    await scheduler.shutdown()


@pytest.mark.bwrap
async def test_an_in_process_run_creates_its_task_as_its_own(tmp_path: Path) -> None:
    # The other half: the task an in-process run creates names it as its runner from the
    # first write, so a daemon's dispatch in between leaves it alone.
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    api = LocalTaskAPI(service, spawn=lambda task, argv, env: None)
    first: list[int | None] = []
    request = trivial_request(repo).model_dump(by_alias=True)
    done = await api.run(request, on_start=lambda task: first.append(task.runner_pid))
    store.close()
    assert first == [os.getpid()]
    assert done.status == "succeeded", done.error_message
