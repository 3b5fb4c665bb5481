"""Pages of events as the daemon's task API answers them: one task's by per-task ``seq``,
or everything by global ``gseq`` (what a dashboard resumes from). Each request subscribes
to the bus *first*, then reads the history it asks for, then (when there is nothing new)
waits on the subscription up to ``wait`` seconds: no event can fall between the read and
the wait."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hal9999.errors import TaskNotFound
from hal9999.events.bus import Subscription
from hal9999.events.models import Event
from hal9999.events.reader import by_gseq, events_after_seq
from hal9999.store import Store
from hal9999.store.events import IndexedEvent
from hal9999.tasks.alive import runner_alive
from hal9999.tasks.state import ACTIVE, TaskStatus

if TYPE_CHECKING:
    from hal9999.events.bus import EventBus
    from hal9999.tasks.scheduler import Scheduler
    from hal9999.tasks.service import TaskService


class Served(Protocol):
    """What a page is read from: the process that runs the tasks (its scheduler and bus)."""

    service: TaskService
    scheduler: Scheduler
    bus: EventBus

    @property
    def store(self) -> Store:
        """The tasks' store."""
        ...


PAGE = 1000
"""Events per answer at most; the caller asks again from where the page ends."""
MAX_WAIT_S = 60.0
"""Longest a request may wait for new events."""
_LOST_AFTER_S = 5.0
"""An indexed event still missing from its file after this long was lost by a crash."""


async def _woken(subscription: Subscription, newer: Any, wait: float) -> bool:
    """Whether an event ``newer(event)`` accepts arrives within ``wait`` seconds. The bus
    only wakes the request: what it answers is read again from the file or the index, which
    hold the order (events of other processes can reach the bus after later ones)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while (event := await subscription.get()) is not None:
                if newer(event):
                    return True
    return False


async def follow_page(
    served: Served,
    task_id: str,
    *,
    after_seq: int,
    wait: float,
    quiet: frozenset[str] = frozenset(),
) -> Any:
    """Events of one task above ``after_seq``; ``done`` once it is over and all is sent.
    Events of a ``quiet`` type do not end the wait (the caller shows none of them): a page
    of only those waits for another event, the run's end or the end of ``wait``."""
    service = served.service
    task = await _find(service, task_id)
    unrecorded = served.scheduler.unrecorded.get(task.id)
    if unrecorded is not None and task.status in ACTIVE and task.id not in served.scheduler.running:
        # Its run is over and could not record its end: no event will come to end a wait.
        raise type(unrecorded)(f"task {task.id}: {unrecorded.message}", hint=unrecorded.hint)
    subscription = served.bus.subscribe(task.id)
    path = service.session(task).events
    releasing = True  # a page that ends the run may wait for it once (below)
    try:
        while True:
            # Looked up before the status: a run the status then shows resting (not queued
            # again for a retry) is the run that wrote the task's last task_end, not a retry.
            before = served.scheduler.running.get(task.id)
            # The record, then from the last event the caller has, to learn its type (is it
            # the task_end?): in one thread hop (each hop is a wake-up of the
            # loop on the way to the answer that ends a run).
            record, tail = await asyncio.to_thread(_read, service.store, task.id, path, after_seq)
            status = record.status
            over = status not in ACTIVE and task.id not in served.scheduler.running
            newer = [e for e in tail if e.seq > after_seq]
            page = newer[:PAGE]
            last = page[-1] if page else (tail[-1] if tail else None)
            ended = status == TaskStatus.INTERRUPTED or (
                last is not None and last.type == "task_end"
            )
            if over and not ended and last is not None and last.type == "message":
                # Notes after the run's end (_ends); only notes since the caller's last
                # event: is a task_end before them? (The whole file, once, in that case.)
                trailing = _ends(tail)
                if trailing is None:
                    trailing = _ends(await asyncio.to_thread(events_after_seq, path, 0))
                ended = bool(trailing)
            done = over and len(newer) <= PAGE and ended
            runner = served.scheduler.running.get(task.id)
            if page and ended and not done and releasing and wait > 0 and status not in ACTIVE:
                # The page ends the run, which is still giving its sandbox back (or was when
                # its status was read): answered once the run is over, the caller learns it
                # is done from this answer and need not ask again. Only this
                # run's end: a task queued again for a retry is not waited for, and the page
                # goes as it is then.
                releasing = False
                if before is not None:
                    started = time.monotonic()
                    await asyncio.wait({before}, timeout=wait)
                    wait -= time.monotonic() - started
                continue
            if done or wait <= 0 or len(page) == PAGE or any(e.type not in quiet for e in page):
                break
            seen = page[-1].seq if page else after_seq
            started = time.monotonic()
            if ended and runner is not None:
                # Its last event is written but the run is still releasing its sandbox: no
                # event will come to wake us, the run's own end does (the client
                # waited out the whole long poll after every task).
                await asyncio.wait({runner}, timeout=wait)
            elif ended and task.id not in served.scheduler.running and not over:
                # The run ended between the status read above and now (the event file was
                # read in a thread meanwhile): read again, no event will come to wake us.
                # Only once: a run still active after that waits for events as any does.
                if (await asyncio.to_thread(service.store.get_task, task.id)).status in ACTIVE:
                    if not await _woken(subscription, lambda e: e.seq > after_seq, wait):
                        break
            elif not await _woken(
                subscription, lambda e, seen=seen: e.seq > seen and e.type not in quiet, wait
            ):
                break
            wait -= time.monotonic() - started
    finally:
        subscription.close()
    answer = {"events": [e.model_dump(mode="json") for e in page], "status": status, "done": done}
    if done:
        answer["record"] = record  # as the run left it: read after the run was over
    return answer


def _ends(events: list[Event]) -> bool | None:
    """Whether the last of ``events`` that is not a ``message`` is a ``task_end`` (None:
    only messages). A resting task's events can end in a note: a client from before stop
    46 wrote which config applied once the task was posted, after a fast run's
    ``task_end``, and the task's followers, waiting for a ``task_end`` last, were never
    told ``done`` (the client that wrote it among them: ``hal run`` hung)."""
    for event in reversed(events):
        if event.type != "message":
            return event.type == "task_end"
    return None


async def _find(service: Any, task_id: str) -> Any:
    """The task by id or unique prefix, read on the loop (WAL: a read never waits for a
    writer; a thread hop here would fall in the run's preparing, where the client's first
    follow comes); a thread only when reconciling it writes (an active task whose runner
    died is marked interrupted)."""
    task = service.store.find_task(task_id)
    mine = task.runner_pid == os.getpid()  # this daemon's run: its runner lives
    if (
        task.status in ACTIVE
        and not mine
        and not runner_alive(task.runner_pid, task.runner_started)
    ):
        return await asyncio.to_thread(service.reconcile, task)
    return task


def _read(store: Store, task_id: str, path: Path, after_seq: int) -> tuple[Any, list[Event]]:
    """The task's record, then its events from ``after_seq`` (that one included)."""
    return store.get_task(task_id), events_after_seq(path, max(0, after_seq - 1))


def _bodies(store: Store, rows: list[IndexedEvent]) -> list[Event]:
    """The events of index rows, read from their tasks' files, in ``gseq`` order; stops at
    one not written yet (a writer commits the index just before the file)."""
    wanted: dict[str, dict[int, int]] = {}
    for row in rows:
        wanted.setdefault(row.task_id, {})[row.seq] = row.gseq
    found: dict[int, Event] = {}
    for task_id, seqs in wanted.items():
        try:
            path = Path(store.get_task(task_id).session_dir) / "events.jsonl"
        except TaskNotFound:
            continue  # removed since
        found.update(by_gseq(events_after_seq(path, min(seqs) - 1), seqs))
    events = []
    for row in rows:
        event = found.get(row.gseq)
        if event is None:
            if time.time() - row.ts < _LOST_AFTER_S:
                break
            continue
        events.append(event)
    return events


async def events_page(served: Served, *, after: int, wait: float) -> Any:
    """Every task's events with a ``gseq`` above ``after``, in commit order."""
    subscription = served.bus.subscribe()
    try:
        while True:
            rows = await asyncio.to_thread(served.store.events_after, after, limit=PAGE)
            page = await asyncio.to_thread(_bodies, served.store, rows)
            if page or wait <= 0:
                break
            started = time.monotonic()
            if not await _woken(subscription, lambda e: e.gseq > after, wait):
                break
            wait -= time.monotonic() - started
    finally:
        subscription.close()
    last = page[-1].gseq if page else after
    return {"events": [e.model_dump(mode="json") for e in page], "last_gseq": last}
