"""A follower of a task whose last event is written but whose run is still releasing its
sandbox is answered when the run ends, not after the whole long poll (every
``hal run`` through ``hal serve`` took the client's 10 s wait on top of the task)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hal9999.events.bus import EventBus
from hal9999.events.models import Output, Phase, TaskEnd
from hal9999.server.follow import follow_page

LONG_POLL_S = 30.0
HOUR_S = 3600.0
"""A wait no test sits out: a page answered within a test's bound was not waited out."""


def _daemon(tmp_path: Path, running: dict[str, asyncio.Task[None]]) -> Any:
    events = tmp_path / "events.jsonl"
    lines = [
        Phase(seq=1, task_id="t1", phase="succeeded", previous="collecting"),
        TaskEnd(seq=2, task_id="t1", status="succeeded"),
    ]
    events.write_text("".join(e.model_dump_json() + "\n" for e in lines))
    task = SimpleNamespace(id="t1", status="succeeded", runner_pid=None)
    store = SimpleNamespace(get_task=lambda task_id: task, find_task=lambda task_id: task)
    service = SimpleNamespace(
        find=lambda task_id: task,
        session=lambda record: SimpleNamespace(events=events),
        store=store,
    )
    return SimpleNamespace(
        service=service, bus=EventBus(), scheduler=SimpleNamespace(running=running, unrecorded={})
    )


async def test_follow_answers_done_when_the_run_releases_not_after_the_wait(
    tmp_path: Path,
) -> None:
    running: dict[str, asyncio.Task[None]] = {}

    async def releasing() -> None:
        await asyncio.sleep(0.2)  # the sandbox's release after task_end
        running.pop("t1", None)

    running["t1"] = asyncio.create_task(releasing())
    daemon = _daemon(tmp_path, running)
    # Before the fix the request slept the whole wait (nothing more is ever published): an
    # hour here, so answering within the (generous) bound is answering at the release.
    page = await asyncio.wait_for(follow_page(daemon, "t1", after_seq=2, wait=HOUR_S), 120)
    assert page["done"] is True
    assert page["events"] == []


async def test_follow_of_a_released_task_is_done_at_once(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, {})
    page = await follow_page(daemon, "t1", after_seq=0, wait=LONG_POLL_S)
    assert page["done"] is True
    assert [e["type"] for e in page["events"]] == ["phase", "task_end"]


class _EndsWhileAsked(dict[str, "asyncio.Task[None]"]):
    """The scheduler's running runs, where the run ends just after the follower learns it
    still runs: it is gone when the follower then looks for it to wait on."""

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        self.pop(str(key), None)
        return found


async def test_follow_of_a_run_that_ends_between_its_reads_is_done_at_once(
    tmp_path: Path,
) -> None:
    async def released() -> None:
        return None

    running = _EndsWhileAsked(t1=asyncio.create_task(released()))
    daemon = _daemon(tmp_path, running)
    # Before the fix the request waited on the bus for an event that never comes: the
    # whole long poll (a `hal run` through `hal serve` then took 10 s more, now and then),
    # an hour here, so answering within the (generous) bound is answering at once.
    page = await asyncio.wait_for(follow_page(daemon, "t1", after_seq=2, wait=HOUR_S), 120)
    assert page["done"] is True


async def test_a_follower_that_shows_only_the_agent_is_not_woken_by_hals_own_events(
    tmp_path: Path,
) -> None:
    # `wake=agent` (the thin `hal run`): a page of hal's own events waits for the agent's
    # output or the run's end instead of costing a request each.
    events = tmp_path / "events.jsonl"
    events.write_text(Phase(seq=1, task_id="t1", phase="running").model_dump_json() + "\n")
    task = SimpleNamespace(id="t1", status="running", runner_pid=os.getpid())
    service = SimpleNamespace(
        find=lambda task_id: task,
        session=lambda record: SimpleNamespace(events=events),
        store=SimpleNamespace(get_task=lambda task_id: task, find_task=lambda task_id: task),
    )
    runner = asyncio.create_task(asyncio.sleep(LONG_POLL_S))
    bus = EventBus()
    bus.attach(asyncio.get_running_loop())
    scheduler = SimpleNamespace(running={"t1": runner}, unrecorded={})
    daemon = SimpleNamespace(service=service, bus=bus, scheduler=scheduler)
    # Without `quiet`, the phase alone is a page, at once.
    page = await asyncio.wait_for(follow_page(daemon, "t1", after_seq=0, wait=LONG_POLL_S), 10)
    assert [e["type"] for e in page["events"]] == ["phase"]
    quiet = frozenset({"phase", "message"})
    follower = asyncio.create_task(
        follow_page(daemon, "t1", after_seq=0, wait=LONG_POLL_S, quiet=quiet)
    )
    await asyncio.sleep(0.2)
    assert not follower.done(), "woken by a phase"
    output = Output(seq=2, task_id="t1", text="hello\n")
    with events.open("a") as file:
        file.write(output.model_dump_json() + "\n")
    bus.publish(output)
    page = await asyncio.wait_for(follower, 10)
    assert [e["type"] for e in page["events"]] == ["phase", "output"]
    assert page["done"] is False
    runner.cancel()


async def test_the_answer_that_ends_a_run_reads_once_and_carries_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After the run's end the answer read the status, the events and the record
    # in three thread hops (each a wake-up of the daemon's loop on the client's way out).
    hops: list[str] = []
    original = asyncio.to_thread

    async def counted(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)

    async def releasing() -> None:
        await asyncio.sleep(0.05)
        running.pop("t1", None)

    running: dict[str, asyncio.Task[None]] = {"t1": asyncio.create_task(releasing())}
    daemon = _daemon(tmp_path, running)
    page = await follow_page(daemon, "t1", after_seq=0, wait=LONG_POLL_S)
    assert page["done"] is True
    assert page["record"] is daemon.service.store.get_task("t1")
    # A read while the run releases its sandbox, one after it is over; the task is found
    # on the loop (a third hop, in the run's preparing for a `hal run`).
    assert hops == ["_read", "_read"], hops
    quick = await follow_page(daemon, "t1", after_seq=0, wait=LONG_POLL_S)
    assert quick["done"] is True and len(hops) == 3, hops


async def test_a_followed_task_whose_runner_died_is_reconciled_in_a_thread(
    tmp_path: Path,
) -> None:
    # Found on the loop, but an active task whose runner is dead is written `interrupted`
    # by reconcile, a write: that goes to a thread, as `find` did.
    daemon = _daemon(tmp_path, {})
    dead = SimpleNamespace(id="t1", status="running", runner_pid=2**22 + 1, runner_started=None)
    daemon.service.store.find_task = lambda task_id: dead
    threads: list[str] = []

    def reconcile(task: Any) -> Any:
        threads.append(threading.current_thread().name)
        return daemon.service.store.get_task(task.id)  # interrupted meanwhile: final

    daemon.service.reconcile = reconcile
    page = await follow_page(daemon, "t1", after_seq=0, wait=LONG_POLL_S)
    assert page["done"] is True
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
