"""The event bus: every recorded event, fanned out in-process to whoever subscribed.

Writers in this process publish to it as they write (``EventLog`` sinks, from any thread).
Events that *other* processes write (a foreground ``hal run`` while ``hal serve`` runs)
reach it through :class:`IndexTail`, which follows the store's event index by global
``gseq`` and reads the bodies from the tasks' JSONL files. An event that arrives both ways is
delivered once (dedupe by ``gseq``).

A consumer subscribes *first*, then reads the history it needs, and drops what it already
has by ``seq`` (per task) or ``gseq`` (global). A subscriber that falls more than
``max_queue`` events behind is closed (``overflowed``) rather than slowing the writers; it
resumes from the last ``gseq`` it saw.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from hal9999.events.hive import HiveEvent
from hal9999.events.log import Sink
from hal9999.events.models import Event
from hal9999.events.reader import by_gseq, events_after_seq
from hal9999.store import Store

logger = logging.getLogger(__name__)

_E = TypeVar("_E", Event, HiveEvent)
_REMEMBERED = 1 << 16
"""How many recent gseqs the bus remembers to drop an event that arrives twice."""


class _Queued(Generic[_E]):
    """A subscriber's queue, in publishing order; closed rather than slowing the writers
    once it falls ``max_queue`` events behind."""

    def __init__(self, bus: EventBus, max_queue: int) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[_E | None] = asyncio.Queue()
        self.max_queue = max_queue
        self.overflowed = False
        """Set when the subscriber fell too far behind and was closed."""

    def offer(self, event: _E) -> None:
        """Queue ``event`` (on the bus's loop); a subscriber too far behind is closed."""
        if self.queue.qsize() >= self.max_queue:
            self.overflowed = True
            self.close()
            return
        self.queue.put_nowait(event)

    async def get(self) -> _E | None:
        """The next event; None once closed."""
        return await self.queue.get()

    def close(self) -> None:
        """Stop receiving; a waiting :meth:`get` returns None."""
        self._unsubscribe()
        self.queue.put_nowait(None)

    def _unsubscribe(self) -> None:
        raise NotImplementedError


class Subscription(_Queued[Event]):
    """The events one subscriber gets (one task's, or every task's), in publishing order."""

    def __init__(self, bus: EventBus, task_id: str | None, max_queue: int) -> None:
        super().__init__(bus, max_queue)
        self.task_id = task_id

    def offer(self, event: Event) -> None:
        """Queue ``event`` if it is for this subscriber (on the bus's loop)."""
        if self.task_id is None or event.task_id == self.task_id:
            super().offer(event)

    def _unsubscribe(self) -> None:
        self.bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while (event := await self.queue.get()) is not None:
            yield event


class HiveSubscription(_Queued[HiveEvent]):
    """The hive events one subscriber gets, in publishing order."""

    def _unsubscribe(self) -> None:
        self.bus.unsubscribe_hive(self)


class EventBus:
    """In-process publish/subscribe of recorded events; :meth:`publish` is thread-safe."""

    def __init__(self, *, max_queue: int = 10_000) -> None:
        self.max_queue = max_queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriptions: list[Subscription] = []
        self._hive: list[HiveSubscription] = []
        self._seen: set[int] = set()
        self._order: deque[int] = deque()
        self._lock = threading.Lock()
        self._handed: list[tuple[Callable[[Any], None], Any]] = []
        """What other threads published, in their order, not yet delivered on the loop."""
        self._hand_lock = threading.Lock()
        self.last_gseq = 0
        """The highest ``gseq`` delivered so far."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` (where subscribers await)."""
        self._loop = loop

    @property
    def sink(self) -> Sink:
        """This bus as an ``EventLog`` sink."""
        return self.publish

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every matching subscriber (from any thread)."""
        self._on_loop(self._deliver, event)

    def publish_hive(self, event: HiveEvent) -> None:
        """Hand a recorded hive event to every hive subscriber (from any thread)."""
        self._on_loop(self._deliver_hive, event)

    def _on_loop(self, deliver: Callable[[_E], None], event: _E) -> None:
        """Run ``deliver(event)`` on the bus's loop: now when called on it, else soon."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if self._handed:  # after what other threads published before it
                self._drain()
            deliver(event)
            return
        # One wake-up of the loop for what other threads publish before it drains (issue
        # 16: a flusher's batch was one loop callback, and one self-pipe write, an event).
        with self._hand_lock:
            self._handed.append((deliver, event))
            first = len(self._handed) == 1
        if first:
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed meanwhile: nothing is delivered
                with self._hand_lock:
                    self._handed.clear()

    def _drain(self) -> None:
        """Deliver, in order, what other threads handed over (on the loop)."""
        with self._hand_lock:
            handed, self._handed = self._handed, []
        for deliver, event in handed:
            try:
                deliver(event)
            except Exception:  # as the loop would log a callback's: the rest still go
                logger.exception("delivering %s failed", type(event).__name__)

    def _deliver_hive(self, event: HiveEvent) -> None:
        if event.gseq and not self._remember(event.gseq):
            return
        for subscription in list(self._hive):
            subscription.offer(event)

    def subscribe_hive(self) -> HiveSubscription:
        """Start receiving hive events; call on the bus's loop."""
        if self._loop is None:
            self.attach(asyncio.get_running_loop())
        subscription = HiveSubscription(self, self.max_queue)
        self._hive.append(subscription)
        return subscription

    def unsubscribe_hive(self, subscription: HiveSubscription) -> None:
        """Stop delivering hive events to ``subscription``."""
        if subscription in self._hive:
            self._hive.remove(subscription)

    def _remember(self, gseq: int) -> bool:
        """Note ``gseq`` as delivered; False when it already was (the same event twice)."""
        with self._lock:
            if gseq in self._seen:
                return False
            self._seen.add(gseq)
            self._order.append(gseq)
            if len(self._order) > _REMEMBERED:
                self._seen.discard(self._order.popleft())
            self.last_gseq = max(self.last_gseq, gseq)
            return True

    def seen(self, gseq: int) -> bool:
        """Whether the event with this ``gseq`` was delivered recently."""
        with self._lock:
            return gseq in self._seen

    def _deliver(self, event: Event) -> None:
        if event.gseq and not self._remember(event.gseq):
            return
        for subscription in list(self._subscriptions):
            subscription.offer(event)

    def subscribe(self, task_id: str | None = None) -> Subscription:
        """Start receiving events (of one task, or all); call on the bus's loop."""
        if self._loop is None:
            self.attach(asyncio.get_running_loop())
        subscription = Subscription(self, task_id, self.max_queue)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription`` (no error when already gone)."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)


@dataclass(eq=False)
class IndexTail:
    """Brings events written by other processes to the bus: follows the store's index by
    ``gseq`` and reads each new event's body from its task's file."""

    store: Store
    bus: EventBus
    path_of: Callable[[str], Path | None]
    """The events file of a task (None for a task that is gone)."""
    _: KW_ONLY
    poll: float = 0.2
    patience: float = 5.0
    """How long an indexed event may stay missing from its file before it is skipped
    (its writer was killed between the index commit and the file write)."""
    cursor: int = field(default=0, init=False)
    _missing_since: float | None = field(default=None, init=False, repr=False)

    async def run(self, *, start: int | None = None) -> None:
        """Follow the index forever, from ``start`` (default: what is there now)."""
        self.cursor = start if start is not None else await asyncio.to_thread(self.store.last_gseq)
        while True:
            try:
                await self.step()
            except Exception:
                logger.exception("following the event index failed; retrying")
            await asyncio.sleep(self.poll)

    async def step(self) -> int:
        """Publish what was committed since the cursor; returns how many events."""
        rows = await asyncio.to_thread(self.store.events_after, self.cursor, limit=2000)
        wanted = [row for row in rows if not self.bus.seen(row.gseq)]
        by_task: dict[str, dict[int, int]] = {}
        for row in wanted:
            by_task.setdefault(row.task_id, {})[row.seq] = row.gseq
        found: dict[int, Event] = {}
        for task_id, seqs in by_task.items():
            path = self.path_of(task_id)
            if path is None:
                continue
            events = await asyncio.to_thread(events_after_seq, path, min(seqs) - 1)
            found.update(by_gseq(events, seqs))
        published = 0
        for row in rows:
            if self.bus.seen(row.gseq):
                self.cursor = row.gseq
                continue
            event = found.get(row.gseq)
            if event is None and self.path_of(row.task_id) is not None:
                # Indexed but not in the file yet (written just after the commit), or lost.
                now = time.monotonic()
                self._missing_since = self._missing_since or now
                if now - self._missing_since < self.patience:
                    break
                logger.warning("event %d of task %s is not in its file", row.gseq, row.task_id)
            self._missing_since = None
            self.cursor = row.gseq
            if event is not None:
                self.bus.publish(event)
                published += 1
        return published
