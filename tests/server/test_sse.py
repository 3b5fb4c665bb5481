"""Server-sent events from the bus: ``id:`` is the durable gseq; a reconnect with
``Last-Event-ID`` gets exactly what it missed (from the window, or from the index and the
files, across a daemon restart), or ``resync``; pings keep an idle stream alive; a task's
stream carries only its events, those written by other processes included."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.server.sse_client import Stream, read_events

from hal9999.events.bus import EventBus
from hal9999.events.hive import AgentState
from hal9999.events.log import EventLog
from hal9999.events.models import Output
from hal9999.hive import store as hive_store
from hal9999.server import listen, sse
from hal9999.server.app import ServerContext, build_app
from hal9999.server.listen import HalServer
from hal9999.server.routing import Router
from hal9999.server.sse import EventFeed, add_stream_routes
from hal9999.store import Store
from hal9999.store.events import FeedRow

TOKEN = "sse-token"


class Served:
    """A store, bus, feed and the stream routes on 127.0.0.1, like the daemon has them."""

    def __init__(self, home: Path, port: int = 0, **feed: Any) -> None:
        self.home = home
        self.port = port
        self.feed_options = feed
        self.removed: set[str] = set()

    def path_of(self, task_id: str) -> Path | None:
        return None if task_id in self.removed else self.home / f"{task_id}.jsonl"

    async def start(self) -> None:
        self.store = Store.open(self.home)
        self.bus = EventBus()
        self.bus.attach(asyncio.get_running_loop())
        hive_store.set_publisher(self.bus.publish_hive)  # as the daemon does
        self.feed = EventFeed(self.store, self.bus, self.path_of, **self.feed_options)
        await self.feed.start()
        self.feed_task = asyncio.create_task(self.feed.run())
        ctx = ServerContext(
            home=self.home, token=TOKEN, store=self.store, bus=self.bus, feed=self.feed,
            events_path=self.path_of,
        )  # fmt: skip
        router = Router()
        add_stream_routes(router, ctx)
        self.server = HalServer(build_app(ctx, router, dashboard=False))
        self.port = await self.server.listen_tcp("127.0.0.1", self.port)

    async def stop(self) -> None:
        hive_store.set_publisher(None)
        self.feed.close()
        await self.server.close()
        self.feed_task.cancel()
        await asyncio.gather(self.feed_task, return_exceptions=True)
        self.store.close()

    def writer(self, task_id: str, *, to_bus: bool = True, batch: int = 8) -> EventLog:
        log = EventLog(
            self.home / f"{task_id}.jsonl", task_id, store=self.store, index_batch=batch,
            max_delay=0.01,
        )  # fmt: skip
        if to_bus:  # else: like another process, reaching the daemon through the index
            log.add_sink(self.bus.sink)
        return log

    def all_gseqs(self, task_id: str | None = None) -> list[int]:
        return [r.gseq for r in self.store.events_after(0, task_id=task_id, limit=1_000_000)]

    @asynccontextmanager
    async def stream(
        self, into: Stream, path: str = "/v1/events/stream", last_id: str | None = None,
        after: int | None = None,
    ) -> AsyncIterator[AsyncIterator[Any]]:  # fmt: skip
        headers = {"authorization": f"Bearer {TOKEN}"}
        if last_id is not None:
            headers["last-event-id"] = last_id
        params = {"after": str(after)} if after is not None else {}
        url = f"http://127.0.0.1:{self.port}{path}"
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", url, headers=headers, params=params) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                yield read_events(response, into)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Served] = []

    async def start(**feed: Any) -> Served:
        s = Served(tmp_path, **feed)
        await s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        if not s.feed.closed:
            await s.stop()


def emit_in_thread(logs: list[EventLog], count: int, pause: float = 0.0005) -> threading.Thread:
    """Each log emits ``count`` output events from a thread of its own (like runners)."""

    def run(log: EventLog) -> None:
        for i in range(count):
            log.emit(Output(text=f"{log.task_id} line {i}\n"))
            time.sleep(pause)
        log.close()

    threads = [threading.Thread(target=run, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    joiner = threading.Thread(target=lambda: [t.join() for t in threads])
    joiner.start()
    return joiner


async def collect_until(
    events: AsyncIterator[Any], stream: Stream, done: Callable[[], bool], grace: float = 0.0
) -> None:
    """Read until ``done()``, then ``grace`` seconds more (a duplicate would show up)."""
    async with asyncio.timeout(30):
        if not done():
            async for _ in events:
                if done():
                    break
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            async for _ in events:
                pass


@pytest.mark.parametrize("window", [4096, 16])
async def test_a_reconnect_mid_stream_gets_exactly_what_it_missed(
    served: Callable[..., Any], window: int
) -> None:
    s = await served(window=window)
    writing = emit_in_thread([s.writer(f"t{i}") for i in range(3)], 200, pause=0.005)
    first, second = Stream(), Stream()
    async with s.stream(first, after=0) as events:
        await collect_until(events, first, lambda: len(first.gseqs()) >= 100)
    assert writing.is_alive()  # left mid-stream
    # Away a while (with a small window, the missed events have left it: index + files).
    await asyncio.sleep(0.3)
    async with s.stream(second, last_id=first.last_id) as events:
        await asyncio.to_thread(writing.join)
        total = len(s.all_gseqs())
        await collect_until(
            events, second, lambda: len(first.gseqs() + second.gseqs()) >= total, grace=0.3
        )
    got = first.gseqs() + second.gseqs()
    assert total == 600 and got == s.all_gseqs()  # every one, once, in gseq order
    body = first.events[0].json()
    assert body["type"] == "output" and body["gseq"] == int(first.events[0].id or 0)


async def test_without_a_stream_the_feed_reads_the_index_at_most_every_poll(
    served: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every batch of every task woke the feed into a thread hop reading the index
    # and a frame a event, with no stream to send them to (a daemon with no dashboard open).
    s = await served()
    reads: list[float] = []
    feed_after = s.store.feed_after

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(time.monotonic())
        return feed_after(*args, **kwargs)

    monkeypatch.setattr(s.store, "feed_after", counted)
    log = s.writer("t1", batch=1)
    started = time.monotonic()
    for i in range(20):  # 20 batches of one, each published to the bus apart from the others
        log.emit(Output(text=f"idle {i}\n"))
        await asyncio.sleep(0.03)
    log.close()
    took = time.monotonic() - started
    assert len(reads) <= 2 + took / sse._POLL_S  # one a wake before (20)
    # A stream "from now" opened after that starts at the index's end: it gets what comes
    # next, none of the earlier events; one resuming from 0 gets every one, once, in order.
    now, resumed = Stream(), Stream()
    async with s.stream(now) as events, s.stream(resumed, after=0) as old:
        later = s.writer("t2")
        later.emit(Output(text="after\n"))
        later.close()
        await collect_until(events, now, lambda: len(now.gseqs()) == 1, grace=0.3)
        await collect_until(old, resumed, lambda: len(resumed.gseqs()) == 21, grace=0.3)
    assert now.gseqs() == s.all_gseqs("t2")
    assert resumed.gseqs() == s.all_gseqs()
    async with asyncio.timeout(10):  # a closed stream's body ends when it is collected
        while s.feed.streams:
            gc.collect()
            await asyncio.sleep(0.05)


async def test_a_restarted_daemon_resumes_from_the_durable_gseq(
    served: Callable[..., Any], tmp_path: Path
) -> None:
    s = await served()
    log = s.writer("t1")
    seen = Stream()
    async with s.stream(seen, after=0) as events:
        for i in range(5):
            log.emit(Output(text=f"before {i}\n"))
        await collect_until(events, seen, lambda: len(seen.gseqs()) == 5)
    log.close()
    port = s.port
    await s.stop()
    # While the daemon is down, a foreground run writes on (its own store connection).
    with Store.open(tmp_path) as store:
        with EventLog(tmp_path / "t1.jsonl", "t1", store=store) as other:
            for i in range(7):
                other.emit(Output(text=f"while down {i}\n"))
    again = Served(tmp_path, port=port)
    await again.start()
    try:
        missed = Stream()
        async with again.stream(missed, last_id=seen.last_id) as events:
            live = again.writer("t1")
            live.emit(Output(text="after\n"))
            await collect_until(events, missed, lambda: len(missed.gseqs()) == 8, grace=0.3)
            live.close()
        assert seen.gseqs() + missed.gseqs() == again.all_gseqs()
        assert [e.json()["text"] for e in missed.events][-1] == "after\n"
    finally:
        await again.stop()


async def test_too_old_or_unknown_ids_get_a_resync(
    served: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "MAX_REPLAY", 10)
    s = await served(window=8)
    log = s.writer("t1")
    for i in range(40):
        log.emit(Output(text=f"{i}\n"))
    log.close()
    await asyncio.sleep(0.2)
    everything = s.all_gseqs()
    for last_id, reason in (("1", "missed"), (str(10**9), "unknown event id")):
        got = Stream()
        async with s.stream(got, last_id=last_id) as events:
            await collect_until(events, got, lambda got=got: bool(got.events))  # type: ignore[misc]
        resync = got.events[0]
        assert resync.event == "resync" and reason in resync.json()["reason"]
        assert int(resync.id or 0) == resync.json()["last_gseq"] <= everything[-1]
    near = Stream()  # 5 missed: within the limit, replayed, no resync
    async with s.stream(near, last_id=str(everything[-6])) as events:
        await collect_until(events, near, lambda: len(near.events) == 5, grace=0.3)
    assert near.gseqs() == everything[-5:]


async def test_bad_last_event_id_is_one_clear_400(served: Callable[..., Any]) -> None:
    s = await served()
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"http://127.0.0.1:{s.port}/v1/events/stream",
            headers={"authorization": f"Bearer {TOKEN}", "last-event-id": "12abc"},
        )
        assert answer.status_code == 400 and "Last-Event-ID" in answer.json()["error"]["message"]
        denied = await client.get(f"http://127.0.0.1:{s.port}/v1/events/stream")
        assert denied.status_code == 401


async def test_a_tasks_stream_has_its_events_also_from_other_processes_and_pings(
    served: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "PING_S", 0.2)
    s = await served()
    mine, other = s.writer("t1"), s.writer("t2", to_bus=False)
    got = Stream()
    async with s.stream(got, path="/v1/tasks/t2/events/stream") as events:
        for i in range(3):
            mine.emit(Output(text=f"mine {i}\n"))
            other.emit(Output(text=f"other {i}\n"))
        await collect_until(events, got, lambda: len(got.gseqs()) == 3)
        await collect_until(events, got, lambda: got.pings >= 2)  # idle: pings
    mine.close()
    other.close()
    assert got.gseqs() == s.all_gseqs("t2")
    assert [e.json()["text"] for e in got.events] == [f"other {i}\n" for i in range(3)]


@pytest.mark.parametrize("window", [4096, 4])
async def test_hive_events_share_the_global_stream_in_gseq_order(
    served: Callable[..., Any], window: int
) -> None:
    s = await served(window=window)
    log = s.writer("t1", batch=1)
    everything, task_only = Stream(), Stream()
    async with s.stream(everything, after=0) as events:
        async with s.stream(task_only, path="/v1/tasks/t1/events/stream", after=0) as mine:
            for i in range(6):
                log.emit(Output(text=f"line {i}\n"))
                await asyncio.to_thread(
                    hive_store.record_hive_event, s.store, AgentState(agent="a", state=f"s{i}")
                )
            await collect_until(events, everything, lambda: len(everything.gseqs()) == 12, 0.3)
            await collect_until(mine, task_only, lambda: len(task_only.gseqs()) == 6, 0.3)
    log.close()
    types = [e.json()["type"] for e in everything.events]
    assert types == ["output", "agent_state"] * 6
    assert everything.gseqs() == sorted(everything.gseqs()) and len(set(everything.gseqs())) == 12
    assert [e.json()["type"] for e in task_only.events] == ["output"] * 6
    # A reconnect from the start replays both kinds (from the index with a small window).
    again = Stream()
    async with s.stream(again, last_id="0") as events:
        await collect_until(events, again, lambda: len(again.gseqs()) == 12, 0.3)
    assert again.gseqs() == everything.gseqs()


async def test_stopping_the_daemon_ends_open_streams_at_once(
    served: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listener's grace period made an hour: ended within the bound, the streams were
    # closed by the stop, not cut when the grace period ran out.
    monkeypatch.setattr(listen, "SHUTDOWN_GRACE_S", 3600.0)
    s = await served()
    got = Stream()
    async with s.stream(got, after=0) as events:
        stopping = asyncio.create_task(s.stop())
        async with asyncio.timeout(120):
            async for _ in events:
                pass  # the body ends: the server closed the stream
            await stopping


async def test_an_event_indexed_long_after_it_was_emitted_is_waited_for_not_skipped(
    served: Callable[..., Any], tmp_path: Path
) -> None:
    s = await served()
    got = Stream()
    async with s.stream(got, after=0) as events:
        emitted = time.time() - 60  # by a writer that fell a minute behind (a loaded machine)
        (gseq,) = await asyncio.to_thread(s.store.record_events, "t9", [(1, "output", emitted)])
        async with asyncio.timeout(5):  # the feed has seen the row...
            while s.feed._stalled_since is None:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # ...and looked in the file for it, in vain
        late = Output(text="late\n").model_copy(
            update={"seq": 1, "ts": emitted, "task_id": "t9", "gseq": gseq}
        )
        (tmp_path / "t9.jsonl").write_bytes(late.model_dump_json().encode() + b"\n")
        await collect_until(events, got, lambda: len(got.gseqs()) == 1, 0.3)
    assert got.gseqs() == [gseq] and got.events[0].json()["text"] == "late\n"


HOSTILE = (
    'x\n\nid: 999999\nevent: resync\ndata: {"type": "resync"}\n\n'
    "y\r\rid: 999998\r\rdata: {}\r\n\r\nz\u2028\u0085\x00"
)
"""Agent text that would end an SSE event and start a forged one if it reached the stream raw."""


def test_agent_text_cannot_end_an_sse_frame_or_forge_one() -> None:
    """An agent's output and a hive event an agent named (its text in a field) each become
    exactly one event: the data is JSON, whose escapes leave no CR or LF in a field."""
    task_frame = sse.frame(Output(task_id="t1", seq=3, text=HOSTILE), 7)
    hive = AgentState(agent="a1", state="crashed", detail=HOSTILE)  # recorded as this JSON
    row = FeedRow(8, None, 0, "agent_state", 1.0, hive.model_dump_json())
    for frame, gseq, field in ((task_frame, 7, "text"), (sse.hive_frame(row), 8, "detail")):
        lines = frame.data.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n")
        assert lines[0] == f"id: {gseq}" and lines[1].startswith("data: ")
        assert lines[2:] == ["", ""]  # one event, nothing after it
        assert json.loads(lines[1][len("data: ") :])[field] == HOSTILE
