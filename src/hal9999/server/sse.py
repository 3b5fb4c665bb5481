"""Server-sent events from the event bus, in global ``gseq`` order, resumable.

One :class:`EventFeed` per daemon turns the bus into an ordered log: woken by the bus, it
reads the store's index after its cursor (commit order is ``gseq`` order, and a row is only
visible once every smaller ``gseq`` is), takes each event's body from what the bus delivered
(or, for one the bus missed, from the task's JSONL file) and appends the ready-made SSE frame
to a bounded window of recent events. However many clients stream, the index is read and
each event serialised once.

A stream subscribes first (it takes the feed's wake-up before looking), then sends what it
missed: from the window, or for an older ``Last-Event-ID`` from the index and the files
(at most :data:`MAX_REPLAY` events; beyond that, or for an id this home never handed out, a
``resync`` event tells the client to reload its snapshot). It keeps ``sent``, the last
``gseq`` it sent, and only ever sends larger ones: no duplicate, and since the feed is
gap-free in index order, no loss. A comment line every :data:`PING_S` keeps proxies and
browsers from timing out.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999.errors import ConfigError, HalError
from hal9999.events.bus import EventBus, HiveSubscription, Subscription
from hal9999.events.models import Event
from hal9999.events.reader import events_after_seq
from hal9999.store import Store
from hal9999.store.events import FeedRow, IndexedEvent

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from hal9999.server.app import ServerContext
    from hal9999.server.routing import Router

logger = logging.getLogger(__name__)

PING_S = 15.0
"""Seconds between keep-alive comment lines of an idle stream."""
MAX_REPLAY = 10_000
"""Most missed events a reconnecting client is sent; beyond that it gets ``resync``."""
WINDOW = 4096
"""Recent events the feed keeps ready for streams that are (nearly) caught up."""
WINDOW_BYTES = 16 << 20
"""...and at most this many bytes of them (an output event can be large)."""
_WAIT_FOR_BUS_S = 0.05
"""An indexed event not yet delivered by the bus is looked for in its file after this."""
_LOST_AFTER_S = 30.0
"""An indexed event still missing from its file this long after the feed first waited for
it was lost (its writer died between the index commit and the file write; the next writer
drops such rows). Counted from the wait, not from the event's time: a writer that fell
behind under load is slow, not lost."""
_POLL_S = 1.0
"""The feed looks at the index at least this often, bus or not; and, while no stream is
open, at most this often (a stream's start catches it up first)."""
_STEP_EVERY_S = 0.02
"""...and at most this often: with many busy tasks, one read of the index and one wake-up
of every stream per 20 ms, not one per event (fan-out to 50 clients stays cheap)."""


@dataclass(frozen=True)
class Frame:
    """One event, ready to send."""

    gseq: int
    task_id: str | None
    """None for a hive event (it belongs to no task)."""
    data: bytes


def frame(event: Event, gseq: int) -> Frame:
    """The SSE frame of ``event`` (its id: the global ``gseq``; its data: the JSON event)."""
    body = (
        event.model_dump_json()
        if event.gseq == gseq
        else event.model_copy(update={"gseq": gseq}).model_dump_json()
    )
    return Frame(gseq, event.task_id, f"id: {gseq}\ndata: {body}\n\n".encode())


def resync_frame(gseq: int, reason: str) -> bytes:
    """Tells a client to reload its snapshot and carry on from ``gseq``."""
    data = json.dumps({"type": "resync", "last_gseq": gseq, "reason": reason})
    return f"event: resync\nid: {gseq}\ndata: {data}\n\n".encode()


def hive_frame(row: FeedRow) -> Frame:
    """The SSE frame of a hive event (its body, as recorded, is the data)."""
    return Frame(row.gseq, None, f"id: {row.gseq}\ndata: {row.body}\n\n".encode())


def read_bodies(
    rows: Sequence[IndexedEvent | FeedRow], path_of: Callable[[str], Path | None]
) -> tuple[dict[tuple[str, int], Event], set[str]]:
    """The events of task index rows, read from their tasks' files, by ``(task_id, seq)``;
    and the tasks that are gone (removed: their events never come)."""
    first: dict[str, int] = {}
    for row in rows:
        if row.task_id is not None:
            first[row.task_id] = min(first.get(row.task_id, row.seq), row.seq)
    found: dict[tuple[str, int], Event] = {}
    gone: set[str] = set()
    for task_id, seq in first.items():
        path = path_of(task_id)
        if path is None:
            gone.add(task_id)
            continue
        found.update({(task_id, e.seq): e for e in events_after_seq(path, seq - 1)})
    return found, gone


@dataclass(eq=False)
class EventFeed:
    """Every recorded event in ``gseq`` order, with a window of the recent ones."""

    store: Store
    bus: EventBus
    path_of: Callable[[str], Path | None]
    _: KW_ONLY
    window: int = WINDOW
    window_bytes: int = WINDOW_BYTES
    frames: list[Frame] = field(default_factory=list, init=False)
    _gseqs: list[int] = field(default_factory=list, init=False, repr=False)
    _bytes: int = field(default=0, init=False, repr=False)
    cursor: int = field(default=0, init=False)
    """The last index row the feed has dealt with."""
    floor: int = field(default=0, init=False)
    """Every row above this is in :attr:`frames` (older ones were let go)."""
    closed: bool = field(default=False, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _bodies: dict[tuple[str, int], Event] = field(default_factory=dict, init=False, repr=False)
    _stalled_since: float | None = field(default=None, init=False, repr=False)
    streams: int = field(default=0, init=False)
    """Streams open now (:meth:`attach`)."""
    _stepped: float = field(default=0.0, init=False, repr=False)
    _stepping: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def start(self) -> None:
        """Begin at the index's end (what came before is history, read on demand)."""
        self.cursor = self.floor = await asyncio.to_thread(self.store.last_gseq)

    def changed(self) -> asyncio.Event:
        """Set at the next change: take it *before* looking at :attr:`frames`."""
        return self._changed

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """Stop: every stream ends."""
        self.closed = True
        self._notify()

    async def run(self) -> None:
        """Follow the bus and the index until closed."""
        subscription: Subscription | None = None
        hive: HiveSubscription | None = None
        hive_woke: asyncio.Future[Any] | None = None
        try:
            while not self.closed:
                if subscription is None or subscription.overflowed:
                    subscription = self.bus.subscribe()
                if hive is None or hive.overflowed:
                    hive = self.bus.subscribe_hive()  # only wakes the feed: bodies are in the DB
                    hive_woke = None
                if hive_woke is None:
                    hive_woke = asyncio.ensure_future(hive.get())
                task_woke = asyncio.ensure_future(subscription.get())
                wait = _POLL_S if self._stalled_since is None else _WAIT_FOR_BUS_S
                await asyncio.wait(
                    {task_woke, hive_woke}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if task_woke.done():
                    self._take(task_woke.result())
                else:
                    task_woke.cancel()
                if hive_woke.done():
                    hive_woke = None
                while not subscription.queue.empty():
                    self._take(subscription.queue.get_nowait())
                while not hive.queue.empty():
                    hive.queue.get_nowait()
                self._trim()
                stepped = time.monotonic()
                # Without a stream, what the bus brings is only kept (a dict insert): the
                # index is read at most every _POLL_S, not a thread hop and a frame per
                # event of every task (several hops of the daemon's CPU a
                # task, with no dashboard open). A stream's start catches up (attach).
                if self.streams or stepped - self._stepped >= _POLL_S:
                    if not await self._catch_up():
                        await asyncio.sleep(_POLL_S)
                await asyncio.sleep(max(0.0, stepped + _STEP_EVERY_S - time.monotonic()))
        finally:
            if hive_woke is not None:
                hive_woke.cancel()
            if subscription is not None:
                subscription.close()
            if hive is not None:
                hive.close()

    async def _catch_up(self) -> bool:
        """Step until the index has nothing more ready (one stepper at a time); False when
        the index could not be read (logged)."""
        async with self._stepping:
            self._stepped = time.monotonic()
            try:
                while await self.step():
                    pass
            except Exception:
                logger.exception("the event feed failed to read the index; retrying")
                return False
        return True

    @contextlib.asynccontextmanager
    async def attach(self) -> AsyncIterator[None]:
        """Count a stream open while in the block, the feed caught up with the index at its
        start (a stream "from now" starts at the index's end, as with a feed that stepped
        at every event)."""
        self.streams += 1
        try:
            if self.streams == 1:
                await self._catch_up()
            yield
        finally:
            self.streams -= 1

    def _trim(self) -> None:
        """Bodies the index has passed are let go; and if the index stays unreadable, all of
        them (the files have them): memory stays bounded whatever happens."""
        if len(self._bodies) > 4 * self.window:
            self._bodies = {k: e for k, e in self._bodies.items() if e.gseq > self.cursor}
        if len(self._bodies) > 4 * self.window:
            self._bodies.clear()

    def _take(self, event: Event | None) -> None:
        if event is not None and event.gseq > self.cursor:
            self._bodies[(event.task_id, event.seq)] = event

    async def step(self) -> bool:
        """Move the cursor over what the index has and the bodies allow; True when it read
        a full page (there may be more)."""
        limit = 2000
        rows = await asyncio.to_thread(self.store.feed_after, self.cursor, limit=limit)
        if not rows:
            return False
        missing = [
            r for r in rows if r.task_id is not None and (r.task_id, r.seq) not in self._bodies
        ]
        now = time.monotonic()
        gone: set[str] | None = None
        if missing:
            self._stalled_since = self._stalled_since or now
            if now - self._stalled_since >= _WAIT_FOR_BUS_S:
                read, gone = await asyncio.to_thread(read_bodies, missing, self.path_of)
                self._bodies.update(read)
        added = 0
        for row in rows:
            if row.task_id is None:  # a hive event: its body came with the row
                self._append(hive_frame(row))
                added += 1
                self.cursor = row.gseq
                continue
            event = self._bodies.pop((row.task_id, row.seq), None)
            if event is None:
                if gone is None:
                    break  # not delivered by the bus yet: give it a moment
                removed = row.task_id in gone
                waited = now - (self._stalled_since or now)
                if not removed and waited < _LOST_AFTER_S:
                    break  # indexed, not written yet: wait for it (order matters)
                if not removed:
                    logger.warning("event %d of task %s is not in its file", row.gseq, row.task_id)
            else:
                self._append(frame(event, row.gseq))
                added += 1
            self.cursor = row.gseq
        else:
            self._stalled_since = None
        if added:
            self._notify()
        return len(rows) == limit and self._stalled_since is None

    def _append(self, item: Frame) -> None:
        self.frames.append(item)
        self._gseqs.append(item.gseq)
        self._bytes += len(item.data)
        drop = 0
        while len(self.frames) - drop > self.window or (
            self._bytes > self.window_bytes and len(self.frames) - drop > 1
        ):
            self._bytes -= len(self.frames[drop].data)
            drop += 1
        if drop:
            self.floor = self.frames[drop - 1].gseq
            del self.frames[:drop]
            del self._gseqs[:drop]

    def since(self, sent: int) -> list[Frame] | None:
        """Frames above ``sent``; None when some of them are no longer in the window."""
        if sent < self.floor:
            return None
        return self.frames[bisect.bisect_right(self._gseqs, sent) :]

    async def history(self, sent: int, upto: int, task_id: str | None) -> tuple[list[Frame], bool]:
        """Frames above ``sent`` up to ``upto``, from the index and the files; the flag says
        they were too many (the client must resync)."""
        rows: list[FeedRow] | list[IndexedEvent]
        if task_id is None:  # every task's events and the hive's
            rows = await asyncio.to_thread(self.store.feed_after, sent, limit=MAX_REPLAY + 1)
        else:
            rows = await asyncio.to_thread(
                self.store.events_after, sent, task_id=task_id, limit=MAX_REPLAY + 1
            )
        if len(rows) > MAX_REPLAY and rows[MAX_REPLAY].gseq <= upto:
            return [], True
        wanted = [r for r in rows if r.gseq <= upto]
        bodies, _ = await asyncio.to_thread(read_bodies, wanted, self.path_of)
        frames = []
        for r in wanted:
            if isinstance(r, FeedRow) and r.task_id is None:
                frames.append(hive_frame(r))
            elif r.task_id is not None and (r.task_id, r.seq) in bodies:
                frames.append(frame(bodies[(r.task_id, r.seq)], r.gseq))
        return frames, False


async def event_stream(
    feed: EventFeed, task_id: str | None, after: int | None, *, ping_s: float | None = None
) -> AsyncIterator[bytes]:
    """The SSE body: what was missed after ``after`` (None: from now), then live events."""
    ping_s = PING_S if ping_s is None else ping_s
    async with feed.attach():
        changed = feed.changed()
        sent = feed.cursor if after is None else after
        yield b"retry: 2000\n\n"
        if sent > feed.cursor and sent > await asyncio.to_thread(feed.store.last_gseq):
            sent = feed.cursor
            yield resync_frame(sent, "unknown event id")
        while not feed.closed:
            frames = feed.since(sent)
            if frames is None:
                floor = feed.floor  # the window has everything above it (it may move meanwhile)
                frames, too_many = await feed.history(sent, floor, task_id)
                if too_many:
                    sent = floor
                    yield resync_frame(sent, f"more than {MAX_REPLAY} events were missed")
                    continue
                chunk = [f.data for f in frames]
                sent = floor
                if chunk:
                    yield b"".join(chunk)
                continue
            chunk = [f.data for f in frames if task_id is None or f.task_id == task_id]
            if frames:
                sent = max(sent, frames[-1].gseq)
            if chunk:
                yield b"".join(chunk)
                continue  # more may have arrived while this was sent
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ping_s):
                    await changed.wait()
                    changed = feed.changed()
                    continue
            changed = feed.changed()
            yield b": ping\n\n"


def parse_after(request: Request) -> int | None:
    """Where a stream resumes: ``Last-Event-ID`` (a reconnecting browser), else ``?after=``."""
    value = request.headers.get("last-event-id") or request.query_params.get("after")
    if value is None or (value == "" and "after" not in request.query_params):
        return None  # an empty Last-Event-ID is none; an empty ?after= is refused
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ConfigError("Last-Event-ID (or after) must be an event's gseq (0 or more)")
    return int(value)


def add_stream_routes(router: Router, ctx: ServerContext) -> None:
    """``GET /v1/events/stream`` (every task) and ``/v1/tasks/{id}/events/stream``."""
    from starlette.responses import JSONResponse, StreamingResponse

    from hal9999.server.routing import status_for

    feed = ctx.feed
    assert feed is not None

    async def respond(request: Request, task_id: str | None) -> Response:
        try:
            after = parse_after(request)
            if task_id is not None and ctx.daemon is not None:
                task_id = (await ctx.daemon.tasks.get(task_id)).id
        except HalError as exc:
            return JSONResponse({"error": exc.to_dict()}, status_for(exc))
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        body = event_stream(feed, task_id, after)
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    async def all_tasks(request: Request) -> Response:
        return await respond(request, None)

    async def one_task(request: Request) -> Response:
        return await respond(request, str(request.path_params["id"]))

    query: dict[str, Any] = {"query": ("after",)}
    router.add_stream("/v1/events/stream", all_tasks,
                      "Every task's events as server-sent events (Last-Event-ID resumes).",
                      **query)  # fmt: skip
    router.add_stream("/v1/tasks/{id}/events/stream", one_task,
                      "One task's events as server-sent events (Last-Event-ID resumes).",
                      **query)  # fmt: skip
