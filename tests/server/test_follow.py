"""Following a task through the daemon, with the real scheduler: a run records ``task_end``
(and, when the scheduler's policy retries the failure, the task queued again) before it
lets go of its sandbox. The follower waits for the run's end (test_follow_release.py), and
then, when the task was queued again, for the retry's events: it is not told ``done`` and
does not spin."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.support.tasks import ScriptedService, ended, make_task, until

from hal9999.errors import DiskFull
from hal9999.events.bus import EventBus, Subscription
from hal9999.events.log import EventLog
from hal9999.events.models import Event, Message, Phase, TaskEnd
from hal9999.pool.settings import SchedulerSettings
from hal9999.store import Store, TaskRecord
from hal9999.tasks.pages import follow_page
from hal9999.tasks.retry import Retry
from hal9999.tasks.scheduler import Scheduler
from hal9999.tasks.session import Session

LONG_POLL = 3600.0
"""Far longer than the test may take: a follower that sits it out fails the test."""


class EndingService(ScriptedService):
    """A run that records its end, then holds on (releasing its sandbox) until let go."""

    def __init__(self, store: Store, bus: EventBus) -> None:
        super().__init__(store)
        self.bus = bus
        self.ended = asyncio.Event()
        self.release = asyncio.Event()
        self.outcome = "succeeded"

    def session(self, task: TaskRecord) -> Session:
        return Session(Path(task.session_dir))

    async def run(self, task_id: str, *, retry: Any = None, **_: Any) -> TaskRecord:
        task = self.store.update_task(task_id, status="running")
        events = Session(Path(task.session_dir)).events
        with EventLog(events, task_id, store=self.store) as log:
            log.add_sink(self.bus.sink)
            log.emit(Phase(phase="running"))
            record = ended(self.store, task_id, self.outcome, "provider_error", retry)
            log.emit(TaskEnd(status=self.outcome, exit_code=0))
        self.ended.set()
        await self.release.wait()
        return record


class WatchedBus(EventBus):
    """A bus that tells when a follower has got to waiting for an event."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    def subscribe(self, task_id: str | None = None) -> Subscription:
        subscription = super().subscribe(task_id)
        get = subscription.get

        async def watched_get() -> Event | None:
            self.waiting.set()
            return await get()

        subscription.get = watched_get  # type: ignore[method-assign]
        return subscription

    async def follower_waits(self) -> None:
        """Until a follower waits for an event (then a few turns, for its other waits)."""
        await asyncio.wait_for(self.waiting.wait(), 30)
        self.waiting.clear()
        for _ in range(10):
            await asyncio.sleep(0)


def daemon_of(tmp_path: Path) -> tuple[Store, EndingService, Scheduler, Any]:
    store = Store.open(tmp_path)
    bus = WatchedBus()
    service = EndingService(store, bus)
    settings = SchedulerSettings(max_infra_retries=0)
    scheduler = Scheduler(service, settings, lambda name: 4)  # type: ignore[arg-type]
    return store, service, scheduler, SimpleNamespace(service=service, bus=bus, scheduler=scheduler)


async def test_a_follower_keeps_following_a_run_the_scheduler_queues_again(
    tmp_path: Path,
) -> None:
    # The run's end wakes the follower, which then waits for the retry's events (it is not
    # told done, and it does not spin on the run's end either).
    store, service, scheduler, daemon = daemon_of(tmp_path)
    daemon.bus.attach(asyncio.get_running_loop())
    service.outcome = "failed"
    store.insert_task(make_task(tmp_path, "againaaa", "queued"))
    scheduler.retry = lambda task: Retry(1, {}, 0.0)  # type: ignore[method-assign]
    assert scheduler.dispatch() == 1
    await asyncio.wait_for(service.ended.wait(), 30)
    first = await follow_page(daemon, "againaaa", after_seq=0, wait=0)
    last = first["events"][-1]["seq"]
    follower = asyncio.create_task(follow_page(daemon, "againaaa", after_seq=last, wait=LONG_POLL))
    service.release.set()
    await until(lambda: not scheduler.running)
    await daemon.bus.follower_waits()  # past the run's end, it waits for an event
    assert not follower.done(), "a requeued task is not over"
    service.outcome, service.release = "succeeded", asyncio.Event()
    service.release.set()
    assert scheduler.dispatch() == 1
    page = await asyncio.wait_for(follower, 30)
    assert [e["type"] for e in page["events"]] == ["phase", "task_end"]
    store.close()


async def test_the_page_that_ends_the_run_is_answered_done_once_the_run_is_over(
    tmp_path: Path,
) -> None:
    # The follower gets task_end and `done` in one answer, after the run let go of its
    # sandbox: it need not ask again (a request per `hal run` through the daemon).
    store, service, scheduler, daemon = daemon_of(tmp_path)
    daemon.bus.attach(asyncio.get_running_loop())
    store.insert_task(make_task(tmp_path, "endsaaaa", "queued"))
    assert scheduler.dispatch() == 1
    await asyncio.wait_for(service.ended.wait(), 30)
    follower = asyncio.create_task(follow_page(daemon, "endsaaaa", after_seq=0, wait=LONG_POLL))
    for _ in range(50):
        await asyncio.sleep(0.01)
    assert not follower.done(), "answered before the run was over"
    service.release.set()
    page = await asyncio.wait_for(follower, 30)
    assert [e["type"] for e in page["events"]] == ["phase", "task_end"]
    assert page["done"] is True
    store.close()


async def test_the_page_of_a_run_queued_again_goes_at_once_not_done(tmp_path: Path) -> None:
    # The run that ended is over and the task is queued for a retry: nothing to wait for,
    # and the page goes as it is (not done; the retry's events come to the next request).
    store, service, scheduler, daemon = daemon_of(tmp_path)
    daemon.bus.attach(asyncio.get_running_loop())
    service.outcome = "failed"
    store.insert_task(make_task(tmp_path, "retryaaa", "queued"))
    scheduler.retry = lambda task: Retry(1, {}, 0.0)  # type: ignore[method-assign]
    assert scheduler.dispatch() == 1
    await asyncio.wait_for(service.ended.wait(), 30)
    service.release.set()
    await until(lambda: not scheduler.running)
    page = await asyncio.wait_for(follow_page(daemon, "retryaaa", after_seq=0, wait=LONG_POLL), 30)
    assert [e["type"] for e in page["events"]] == ["phase", "task_end"]
    assert page["done"] is False
    store.close()


async def test_a_note_after_the_runs_end_still_ends_the_follow(tmp_path: Path) -> None:
    # The full `hal run` client wrote which config applied once the task was
    # posted; a fast run's task_end came first, and the client, following the task, was
    # never told done (its `hal run` hung, 2 of 2 two-worker runs of test_daemon_run_e2e).
    # Tasks recorded so, and older clients, must not hang a follower: done, at once, both
    # for the first page and for a caller that has the note already.
    store, service, scheduler, daemon = daemon_of(tmp_path)
    daemon.bus.attach(asyncio.get_running_loop())
    store.insert_task(make_task(tmp_path, "noteaaaa", "queued"))
    assert scheduler.dispatch() == 1
    await asyncio.wait_for(service.ended.wait(), 30)
    service.release.set()
    await until(lambda: not scheduler.running)
    task = store.get_task("noteaaaa")
    with EventLog(Session(Path(task.session_dir)).events, task.id, store=store) as log:
        log.emit(Message(level="info", text="config: HAL_HOME"))
    page = await asyncio.wait_for(follow_page(daemon, task.id, after_seq=0, wait=LONG_POLL), 30)
    assert [e["type"] for e in page["events"]] == ["phase", "task_end", "message"]
    assert page["done"] is True
    note = page["events"][-1]["seq"]
    for after in (note, note - 1):
        again = await asyncio.wait_for(
            follow_page(daemon, task.id, after_seq=after, wait=LONG_POLL), 30
        )
        assert again["done"] is True, after
    store.close()


async def test_a_run_that_could_not_record_its_end_is_told_to_its_follower(
    tmp_path: Path,
) -> None:
    # A daemon's disk full: the run's end could not be written, the task stayed `running`
    # (held by the live daemon, so never swept), and `hal run` through the daemon followed
    # it for good. Now the next request for its events is the run's error.
    store, service, scheduler, daemon = daemon_of(tmp_path)
    daemon.bus.attach(asyncio.get_running_loop())

    async def full(task_id: str, **_: Any) -> TaskRecord:
        store.update_task(task_id, status="running")
        raise DiskFull("cannot write to the database: the disk holding it is full")

    service.run = full  # type: ignore[method-assign]
    store.insert_task(make_task(tmp_path, "fullaaaa", "queued"))
    assert scheduler.dispatch() == 1
    await until(lambda: not scheduler.running)
    assert store.get_task("fullaaaa").status == "running"
    with pytest.raises(DiskFull, match=r"task fullaaaa: .*the disk holding it is full"):
        await asyncio.wait_for(follow_page(daemon, "fullaaaa", after_seq=0, wait=LONG_POLL), 30)
    store.close()
