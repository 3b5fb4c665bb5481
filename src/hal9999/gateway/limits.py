"""One shared backoff per upstream and key: a concurrency cap, a token bucket and a circuit.

Every task of a HAL_HOME goes through one gateway process, so these limits hold for all
agents on the machine at once. When the upstream answers 429/529/5xx the circuit opens for
its ``retry-after`` (or an exponential backoff) and *new* calls wait instead of hitting the
storm; the refused call itself is retried by the gateway, so no agent burns its own retries.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque
from collections.abc import Mapping

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
"""Answers that mean "try again later" and that the gateway retries."""
UPSTREAM_WAIT = "upstream_wait"
"""The error of a ``gateway_requests`` row that records a call's wait on its upstream, not
the call's end: its ``latency_ms`` is the wait, its ``retries`` the retry it waits for."""
RETRY_REASONS = {429: "rate limited", 529: "overloaded", 503: "unavailable", 0: "unreachable"}
"""What a retried answer means, for the task's ``upstream_wait`` event (others: ``error``)."""
MAX_RETRY_AFTER_S = 60.0
"""A longer ``retry-after`` is capped (the agent's own timeouts would fire first)."""


def retry_after_s(headers: Mapping[str, str], attempt: int) -> float:
    """Seconds to wait before the next attempt: ``retry-after`` (seconds or an HTTP date)
    when the upstream sent one, else exponential backoff with jitter."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(value) / 1000))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is not None:
        try:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return float(min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - time.time())))
    backoff: float = min(MAX_RETRY_AFTER_S, 0.5 * 2.0**attempt)
    return backoff * (0.5 + random.random() / 2)


class UpstreamLimiter:
    """The limits of one upstream and key, shared fairly by the tasks that call it.

    A call takes a slot (``concurrency`` of them) and, under ``requests_per_minute``, a rate
    token, once the circuit is closed. Calls that must wait queue per task, and each free
    slot goes to the waiting task that holds the fewest slots (among equals, the one served
    longest ago): a task alone may use every slot, but once others wait, one holding its
    fair share (the slots over the tasks calling, at least one) or more waits behind each
    that holds fewer. A task flooding the upstream therefore delays another's call by at
    most the end of one call in flight, never by its own queue."""

    def __init__(self, concurrency: int, per_minute: float | None) -> None:
        self.concurrency = max(1, concurrency)
        self._per_minute = per_minute
        self._tokens = float(self.concurrency)
        self._refilled = time.monotonic()
        self._paused_until = 0.0
        self.in_flight = 0
        self.peak = 0
        """The most calls at once this limiter let through (tests and `hal doctor`)."""
        self.held: dict[str, int] = {}
        """Slots held, by task."""
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        """Calls waiting, by task; in the order tasks are served among equals."""
        self._timer: asyncio.TimerHandle | None = None

    def pause(self, seconds: float) -> float:
        """Open the circuit: no new call starts for ``seconds``; the seconds until it closes
        (longer when another call opened it for longer)."""
        now = time.monotonic()
        self._paused_until = max(self._paused_until, now + seconds)
        return self._paused_until - now

    def _take_token(self, now: float) -> float:
        """Take a rate token: 0, or the seconds until one is there (none taken)."""
        if self._per_minute is None:
            return 0.0
        rate = self._per_minute / 60.0
        burst = float(self.concurrency)
        self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    def _dispatch(self) -> None:
        """Hand free slots to the waiting tasks holding fewest (see the class)."""
        while self._waiting and self.in_flight < self.concurrency:
            now = time.monotonic()
            delay = self._paused_until - now
            if delay <= 0:
                delay = self._take_token(now)
            if delay > 0:
                self._wake_in(delay)
                return
            task = min(self._waiting, key=lambda name: self.held.get(name, 0))
            queue = self._waiting.pop(task)
            waiter = queue.popleft()
            if queue:  # behind the other tasks, among those holding as many
                self._waiting[task] = queue
            self.held[task] = self.held.get(task, 0) + 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            waiter.set_result(None)

    def _wake_in(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._woken)

    def _woken(self) -> None:
        self._timer = None
        self._dispatch()

    async def acquire(self, task: str) -> None:
        """Wait for the circuit, a rate token and a slot, for a call of ``task``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task, deque()).append(waiter)
        self._dispatch()
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(task)  # granted as it was cancelled: the slot goes on
            else:
                queue = self._waiting.get(task)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiting[task]
            raise

    def release(self, task: str) -> None:
        """A call of ``task`` gave its slot back (it goes to the next waiter)."""
        self.in_flight -= 1
        left = self.held.get(task, 0) - 1
        if left > 0:
            self.held[task] = left
        else:
            self.held.pop(task, None)
        self._dispatch()


class Slot:
    """One call's slot in its limiter: held while the call waits on its upstream, given back
    while it waits on its agent (see :mod:`hal9999.gateway.relay`)."""

    def __init__(self, limiter: UpstreamLimiter, task: str) -> None:
        self.limiter = limiter
        self.task = task
        self.held = False

    async def take(self) -> None:
        """Hold a slot (waiting for one, fairly), unless held already."""
        if not self.held:
            await self.limiter.acquire(self.task)
            self.held = True

    def give_back(self) -> None:
        """Give the slot back, if held."""
        if self.held:
            self.held = False
            self.limiter.release(self.task)
