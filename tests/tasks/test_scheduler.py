"""The queue: limits, priority then age, provider overflow, retries with backoff."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.support.tasks import make_task, setup, until

from hal9999.pool.settings import SchedulerSettings
from hal9999.tasks.retry import backoff


async def test_priority_then_age_within_the_global_limit(tmp_path: Path) -> None:
    store, service, scheduler = setup(tmp_path, {"fake": 10}, max_concurrent=2)
    for n, priority in enumerate([0, 0, 5, 0]):
        store.insert_task(
            make_task(tmp_path, f"t{n}aaaaaa", "queued", created_at=100 + n, priority=priority)
        )
    loop = asyncio.create_task(scheduler.run_forever())
    await until(lambda: len(service.started) == 2)
    assert service.started == ["t2aaaaaa", "t0aaaaaa"], "priority first, then the oldest"
    assert len(scheduler.running) == 2
    service.gate("t2aaaaaa").set()
    await until(lambda: len(service.started) == 3)
    assert service.started[2] == "t1aaaaaa"
    for task_id in ("t0aaaaaa", "t1aaaaaa", "t3aaaaaa"):
        service.gate(task_id).set()
    await until(lambda: store.list_tasks(status=["succeeded"]).__len__() == 4)
    await scheduler.shutdown()
    loop.cancel()


async def test_providers_fill_in_order_and_overflow(tmp_path: Path) -> None:
    store, service, scheduler = setup(tmp_path, {"fake": 2, "local": 1}, max_concurrent=10)
    for n in range(4):
        store.insert_task(
            make_task(tmp_path, f"m{n}aaaaaa", "queued", created_at=n, providers=["fake", "local"])
        )
    assert scheduler.dispatch() == 3, "2 on the first provider, 1 overflowing to the next"
    assert sorted(scheduler.placed.values()) == ["fake", "fake", "local"]
    # Written by the run's task, in a thread (off the loop), before the run starts.
    await until(lambda: "m2aaaaaa" in service.started)
    assert store.get_task("m2aaaaaa").provider == "local"
    assert store.get_task("m3aaaaaa").status == "queued"
    for task_id in list(scheduler.running):
        service.gate(task_id).set()
    await until(lambda: not scheduler.running)
    await scheduler.shutdown()


async def test_infrastructure_failures_retry_agent_failures_do_not(tmp_path: Path) -> None:
    store, service, scheduler = setup(tmp_path, {"fake": 5}, max_infra_retries=2)
    store.insert_task(make_task(tmp_path, "infraaaa", "queued"))
    store.insert_task(make_task(tmp_path, "agentaaa", "queued"))
    store.insert_task(make_task(tmp_path, "retryaaa", "queued", retries=1))
    service.outcomes = {
        "infraaaa": [("failed", "provider_error")] * 3,
        "agentaaa": [("failed", "agent_failed")],
        "retryaaa": [("failed", "agent_failed"), ("succeeded", None)],
    }
    for gate in ("infraaaa", "agentaaa", "retryaaa"):
        service.gate(gate).set()
    loop = asyncio.create_task(scheduler.run_forever())

    def settled() -> bool:
        for gate in service.gates.values():
            gate.set()
        return not scheduler.running and not store.list_tasks(status=["queued", "running"])

    await until(settled)
    infra, agent, retry = (store.get_task(i) for i in ("infraaaa", "agentaaa", "retryaaa"))
    assert infra.status == "failed" and infra.infra_retries == 2
    assert service.started.count("infraaaa") == 3, "the first run and two retries"
    assert agent.status == "failed" and service.started.count("agentaaa") == 1
    assert retry.status == "succeeded" and retry.agent_retries == 1
    assert infra.not_before is not None
    await scheduler.shutdown()
    loop.cancel()


def test_backoff_is_capped_exponential_with_jitter() -> None:
    settings = SchedulerSettings(backoff_base_s=1, backoff_max_s=8)
    assert [backoff(n, settings, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    assert [backoff(n, settings, rand=lambda: 0.0) for n in (1, 4)] == [0.5, 4]


async def test_stuck_tasks_are_reaped_with_a_reason(tmp_path: Path) -> None:
    store, _, scheduler = setup(tmp_path, {"fake": 1}, stuck_after_s=60)
    store.insert_task(make_task(tmp_path, "stuckaaa", "preparing", created_at=time.time() - 600))
    store.insert_task(make_task(tmp_path, "freshaaa", "collecting", created_at=time.time()))
    assert await scheduler.reap_stuck() == ["stuckaaa"]
    stuck = store.get_task("stuckaaa")
    assert stuck.status == "interrupted" and "stuck in preparing" in (stuck.error_message or "")
    assert store.get_task("freshaaa").status == "collecting"


async def test_a_run_that_did_not_fail_ends_without_a_thread_hop(
    tmp_path: Path, monkeypatch: Any
) -> None:
    store, service, scheduler = setup(tmp_path, {"fake": 10}, max_concurrent=4)
    hops: list[str] = []
    real = asyncio.to_thread

    async def counted(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    store.insert_task(make_task(tmp_path, "okaaaaaa", "queued"))
    store.insert_task(make_task(tmp_path, "infraaaa", "queued"))
    service.outcomes["infraaaa"] = [("failed", "provider_error"), ("succeeded", None)]
    loop = asyncio.create_task(scheduler.run_forever())
    await until(lambda: len(service.started) == 2)
    service.gate("okaaaaaa").set()
    service.gate("infraaaa").set()
    await until(lambda: len(service.started) == 3)  # the infrastructure failure, retried
    service.gate("infraaaa").set()
    await until(lambda: not scheduler.running and len(service.started) == 3)
    # Not even the failed one: its retry was written with its end, by the run (the real
    # runner's end is a thread hop of its own, as every run's).
    assert hops == [], "no run's end went to a thread in the scheduler"
    await scheduler.shutdown()
    loop.cancel()
