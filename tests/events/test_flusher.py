"""The batch flusher thread sleeps until its earliest deadline and is woken only for an
earlier one (a wake-up per event was a thread switch per event of a busy daemon)."""

from __future__ import annotations

import threading
import time
from typing import Any

from hal9999.events.flusher import _Flusher


class Batch:
    """Stands in for an ``EventLog``: records when its batch was written."""

    def __init__(self) -> None:
        self.written = threading.Event()
        self.at = 0.0

    def flush(self) -> None:
        self.at = time.monotonic()
        self.written.set()


def asleep(flusher: _Flusher) -> bool:
    return flusher._until != float("inf")


def until_asleep(flusher: _Flusher) -> None:
    deadline = time.monotonic() + 10
    while not asleep(flusher):
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_later_deadlines_do_not_wake_the_thread_and_are_still_written() -> None:
    flusher = _Flusher()
    start = time.monotonic()
    first = Batch()
    flusher.schedule(first, start + 0.3)  # type: ignore[arg-type]
    until_asleep(flusher)
    woken = flusher.wakeups
    later = [Batch() for _ in range(50)]
    for n, batch in enumerate(later):
        flusher.schedule(batch, start + 0.3 + n * 0.001)  # type: ignore[arg-type]
    time.sleep(0.05)
    assert flusher.wakeups == woken  # none of the 50 woke it
    for batch in [first, *later]:
        assert batch.written.wait(10)
    assert first.at >= start + 0.3


def test_an_earlier_deadline_wakes_the_thread_at_once() -> None:
    flusher = _Flusher()
    idle: Any = Batch()
    flusher.schedule(idle, time.monotonic() + 30)
    until_asleep(flusher)
    urgent: Any = Batch()
    asked = time.monotonic()
    flusher.schedule(urgent, 0.0)  # a phase event in a daemon: written now, on the thread
    assert urgent.written.wait(10)
    assert urgent.at - asked < 5  # not the 30 s the thread slept toward
    assert not idle.written.is_set()
    flusher.cancel(idle)
