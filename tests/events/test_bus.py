"""The event bus: in-process fan-out from writers (any thread), events written by another
process reaching it through the index, dedupe by gseq, and slow subscribers."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from hal9999.events.bus import EventBus, IndexTail
from hal9999.events.log import EventLog
from hal9999.events.models import Event, Output, Phase, TaskEnd
from hal9999.store import Store


async def test_writers_publish_to_subscribers_in_order(tmp_path: Path) -> None:
    bus = EventBus()
    everything = bus.subscribe()
    only_b = bus.subscribe("b")
    with Store.open(tmp_path) as store:
        a = EventLog(tmp_path / "a.jsonl", "a", store=store)
        # 1 s, not 10 ms: on a loaded host (the two-worker suite) the flusher wrote
        # b's event before a's next emit, a few statements later, ran (gseq 2, not 3).
        b = EventLog(tmp_path / "b.jsonl", "b", store=store, index_batch=64, max_delay=1.0)
        a.add_sink(bus.sink)
        b.add_sink(bus.sink)
        a.emit(Phase(phase="running"))
        b.emit(Output(text="from b"))  # written by the flusher thread after 1 s
        a.emit(TaskEnd(status="succeeded"))
        got = [await asyncio.wait_for(everything.get(), 5) for _ in range(3)]
        first_b = await asyncio.wait_for(only_b.get(), 5)
        a.close()
        b.close()
    assert [(e.task_id, e.type) for e in got if e] == [
        ("a", "phase"), ("a", "task_end"), ("b", "output")
    ]  # fmt: skip
    assert first_b is not None and first_b.task_id == "b" and first_b.gseq == 3
    assert only_b.queue.empty()


async def test_an_event_arriving_twice_is_delivered_once() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    event = Output(text="x", seq=1, gseq=7, task_id="t")
    bus.publish(event)
    bus.publish(event.model_copy())
    await asyncio.sleep(0)
    assert sub.queue.qsize() == 1 and bus.last_gseq == 7


async def test_a_subscriber_too_far_behind_is_closed_not_waited_for() -> None:
    bus = EventBus(max_queue=3)
    slow = bus.subscribe()
    for n in range(1, 6):
        bus.publish(Output(text="x", seq=n, gseq=n, task_id="t"))
    received: list[Event] = [e async for e in slow]
    assert slow.overflowed and len(received) == 3


OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from hal9999.events.log import EventLog
    from hal9999.events.models import Output, TaskEnd
    from hal9999.store import Store
    home = Path(sys.argv[1])
    with Store.open(home) as store:
        with EventLog(home / "t2.jsonl", "t2", store=store, index_batch=64) as log:
            for n in range(200):
                log.emit(Output(text=f"line {n}"))
            log.emit(TaskEnd(status="succeeded"))
    """
)


async def test_events_written_by_another_process_reach_the_bus(tmp_path: Path) -> None:
    bus = EventBus()
    with Store.open(tmp_path) as store:
        mine = EventLog(tmp_path / "t1.jsonl", "t1", store=store)
        mine.add_sink(bus.sink)
        mine.emit(Output(text="before"))
        tail = IndexTail(store, bus, lambda task: tmp_path / f"{task}.jsonl", poll=0.02)
        following = asyncio.create_task(tail.run())
        sub = bus.subscribe()
        await asyncio.sleep(0.1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", OTHER_PROCESS, str(tmp_path)
        )
        mine.emit(Output(text="meanwhile"))
        assert await proc.wait() == 0
        got: list[Event] = []
        while len(got) < 202:
            event = await asyncio.wait_for(sub.get(), 10)
            assert event is not None
            got.append(event)
        following.cancel()
        mine.close()
    other = [e for e in got if e.task_id == "t2"]
    assert [e.seq for e in other] == list(range(1, 202))
    assert [e.gseq for e in other] == sorted(e.gseq for e in other)
    assert [e.type for e in got if e.task_id == "t1"] == ["output"]  # "meanwhile", once
    assert sub.queue.empty()


async def test_a_threads_burst_of_events_wakes_the_loop_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A flusher's batch must not be one loop callback (a self-pipe write and a wake-up)
    # an event. Published while the loop is busy, a burst is one callback, still in order,
    # and an event published on the loop after it comes after it.
    bus = EventBus()
    sub = bus.subscribe()
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    original = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        wakes.append(callback)
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)

    def burst() -> None:
        for n in range(1, 21):
            bus.publish(Output(text="x", seq=n, gseq=n, task_id="t"))

    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()  # the loop runs nothing meanwhile: the burst waits for it
    bus.publish(Output(text="on the loop", seq=21, gseq=21, task_id="t"))
    await asyncio.sleep(0)
    got = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert [e.seq for e in got if e] == list(range(1, 22))
    assert len(wakes) == 1  # without the change, 20
    thread = threading.Thread(
        target=bus.publish, args=(Output(text="y", seq=22, gseq=22, task_id="t"),)
    )
    thread.start()
    thread.join()
    await asyncio.sleep(0)
    assert len(wakes) == 2 and sub.queue.get_nowait().seq == 22  # type: ignore[union-attr]
