"""Self-wakes: a turn that the agent's own reminders alone would start waits until
``[hive] self_wake_min_s`` after its last turn ended, so ``remind(in_s=1)`` in every turn
cannot run an agent back to back (each turn's output on the host's disk, each its model
calls). Its reminders wait in its mailbox meanwhile; any other mail wakes it at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def self_wake_ready(
    ended: float | None, entries: list[dict[str, Any]], min_s: float
) -> float | None:
    """When a turn woken by the agent's own reminders alone may start (monotonic), if later
    than now: ``min_s`` after its last turn ``ended``; None when it may start now (other
    mail is there, no turn ended yet here, or long enough has passed)."""
    if ended is None or any(entry.get("kind") != "reminder" for entry in entries):
        return None
    ready = ended + min_s
    return ready if time.monotonic() < ready else None


class SelfWakes:
    """The turn loop's record of when each agent's last turn ended, and of the turns held."""

    def __init__(self, min_s: float) -> None:
        self.min_s = min_s
        self._ended: dict[str, float] = {}
        self._waiting: dict[str, asyncio.TimerHandle] = {}

    def turn_ended(self, name: str) -> None:
        """The agent's turn ended now."""
        self._ended[name] = time.monotonic()

    def hold(self, name: str, entries: list[dict[str, Any]], wake: Callable[[str], None]) -> bool:
        """Whether the turn ``entries`` would start must wait; then ``wake(name)`` is called
        when it may start (once, however often this is asked meanwhile)."""
        ready = self_wake_ready(self._ended.get(name), entries, self.min_s)
        if ready is None:
            return False
        if name not in self._waiting:
            delay = ready - time.monotonic()
            self._waiting[name] = asyncio.get_running_loop().call_later(
                delay, self._wake, name, wake
            )
        return True

    def holds(self, name: str) -> bool:
        """Whether a turn of the agent waits for its time."""
        return name in self._waiting

    def _wake(self, name: str, wake: Callable[[str], None]) -> None:
        self._waiting.pop(name, None)
        wake(name)
