"""Reading and following event logs and output logs while something writes them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from hal9999.events.log import EventLog, recover
from hal9999.events.models import Event, Output, Phase
from hal9999.events.reader import follow_events, follow_text, read_events
from hal9999.redact import REDACTED, SecretMasker

T = TypeVar("T")


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


def write_events(path: Path, count: int, task_id: str = "t1") -> None:
    with EventLog(path, task_id) as log:
        for i in range(count):
            log.emit(Output(text=f"line {i}"))


def test_read_events_after_seq(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, 5)
    assert [e.seq for e in read_events(path)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in read_events(path, after_seq=3)] == [4, 5]


def test_read_events_missing_file(tmp_path: Path) -> None:
    assert read_events(tmp_path / "nope.jsonl") == []


def test_read_events_skips_incomplete_trailing_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, 2)
    with path.open("ab") as file:
        file.write(b'{"type": "output", "text": "half')
    assert [e.seq for e in read_events(path)] == [1, 2]


def test_read_events_skips_invalid_lines_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, 1)
    with path.open("ab") as file:
        file.write(b'{"type": "no_such_event"}\n\n')
    write_events(path, 1)
    assert [e.seq for e in read_events(path)] == [1, 2]
    assert "not a valid event" in caplog.text


async def test_follow_events_sees_events_from_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"  # does not exist yet when following starts
    done = threading.Event()

    def writer() -> None:
        with EventLog(path, "t1") as log:
            for i in range(20):
                log.emit(Output(text=f"chunk {i}"))
                time.sleep(0.005)
            log.emit(Phase(phase="succeeded"))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        events = await asyncio.wait_for(
            collect(follow_events(path, stop=done.is_set, poll=0.01)), timeout=30
        )
    finally:
        thread.join()
    assert [e.seq for e in events] == list(range(1, 22))
    assert events[-1].type == "phase"


async def test_follow_events_after_seq_and_drain_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, 10)
    events = await collect(follow_events(path, after_seq=7, stop=lambda: True))
    assert [e.seq for e in events] == [8, 9, 10]


async def test_follow_events_waits_for_a_line_to_finish(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, 1)
    line = Output(text="late", seq=2, task_id="t1").model_dump_json().encode() + b"\n"
    with path.open("ab") as file:
        file.write(line[:10])
    stop = False
    seen: list[Event] = []

    async def follow() -> None:
        async for event in follow_events(path, stop=lambda: stop, poll=0.01):
            seen.append(event)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    assert [e.seq for e in seen] == [1]  # the half line is held, not parsed
    with path.open("ab") as file:
        file.write(line[10:])
    stop = True
    await asyncio.wait_for(task, timeout=10)
    assert [e.seq for e in seen] == [1, 2]


@pytest.mark.parametrize("reader_sees_the_cut", [True, False])
async def test_follow_events_survives_crash_truncation(
    tmp_path: Path, reader_sees_the_cut: bool
) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, 2)
    with path.open("ab") as file:
        file.write(b'{"type": "output", "te')  # the writer crashed mid-line

    # stop() runs once before each read, so it can script what the writer does in between.
    steps: list[Callable[[], object]] = [lambda: None]
    if reader_sees_the_cut:
        steps += [lambda: recover(path), lambda: write_events(path, 2)]
    else:  # the new writer cuts the half line and appends past it before the next read
        steps += [lambda: write_events(path, 2)]

    def stop() -> bool:
        if steps:
            steps.pop(0)()
            return False
        return True

    events = await asyncio.wait_for(collect(follow_events(path, stop=stop, poll=0.01)), 10)
    assert [(e.seq, getattr(e, "text", "")) for e in events] == [
        (1, "line 0"),
        (2, "line 1"),
        (3, "line 0"),
        (4, "line 1"),
    ]


async def test_follow_text_waits_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    stop = False
    chunks: list[str] = []

    async def follow() -> None:
        async for text in follow_text(path, stop=lambda: stop, poll=0.01):
            chunks.append(text)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.03)
    path.write_bytes("héllo ".encode()[:2])  # split inside the UTF-8 'é'
    await asyncio.sleep(0.03)
    with path.open("ab") as file:
        file.write("héllo wörld\n".encode()[2:])
    stop = True
    await asyncio.wait_for(task, timeout=10)
    assert "".join(chunks) == "héllo wörld\n"


async def test_follow_text_from_offset(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_text("0123456789")
    assert await collect(follow_text(path, offset=4, stop=lambda: True)) == ["456789"]


async def test_follow_text_masks_a_secret_split_across_writes(tmp_path: Path) -> None:
    secret = "ghp_abcdefghijklmnop"
    path = tmp_path / "output.log"
    path.write_text(f"token: {secret[:7]}")
    stop = False
    chunks: list[str] = []

    async def follow() -> None:
        async for text in follow_text(
            path, stop=lambda: stop, poll=0.01, masker=SecretMasker([secret])
        ):
            chunks.append(text)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.03)
    with path.open("a") as file:
        file.write(f"{secret[7:]} done")
    stop = True
    await asyncio.wait_for(task, timeout=10)
    assert "".join(chunks) == f"token: {REDACTED} done"
    assert not any(secret[:7] in chunk for chunk in chunks)


async def test_follow_text_missing_file_and_stop(tmp_path: Path) -> None:
    assert await collect(follow_text(tmp_path / "never.log", stop=lambda: True)) == []
