"""The daemon's clock for the hive's threads: one asyncio task that sleeps until the next
reminder or expiry is due, then fires reminders and expires questions and proposals.

It wakes early when this process stores a new deadline (:func:`~hal9999.hive.threads.
notify_deadline`) and at least every ``poll_s`` seconds, which is how a deadline stored by
another process (a ``hal`` command) reaches it. Everything it does is in the store, so a
reminder due while no daemon ran fires when the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from hal9999.hive import approvals, questions, reminders
from hal9999.hive.threads import next_deadline, set_deadline_waker
from hal9999.store import Store

logger = logging.getLogger(__name__)


def sweep(store: Store, now: float | None = None) -> int:
    """Fire due reminders, expire due questions and proposals; how many threads moved."""
    now = time.time() if now is None else now
    moved = len(reminders.fire_due(store, now))
    moved += len(questions.expire_due(store, now))
    moved += len(approvals.expire_due(store, now))
    return moved


class DeadlineLoop:
    """Sleeps until the next deadline (or a wake-up, or the poll interval), then sweeps."""

    def __init__(self, store: Store, *, poll_s: float = 2.0) -> None:
        self.store = store
        self.poll_s = poll_s
        self.swept = 0
        """Threads moved so far (for status and tests)."""
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Sweep soon (callable from any thread of this process)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Sweep forever; a failing sweep is logged and retried at the next poll."""
        self._loop = asyncio.get_running_loop()
        set_deadline_waker(self.wake)
        try:
            while True:
                self._wake.clear()
                try:
                    self.swept += await asyncio.to_thread(sweep, self.store)
                    due = await asyncio.to_thread(next_deadline, self.store)
                except Exception:
                    logger.exception("the hive's deadline sweep failed; retrying")
                    due = None
                delay = self.poll_s if due is None else min(self.poll_s, due - time.time())
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            set_deadline_waker(None)
