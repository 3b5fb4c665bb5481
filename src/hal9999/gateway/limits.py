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
from collections.abc import Mapping

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
"""Answers that mean "try again later" and that the gateway retries."""
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
    """The limits of one upstream and key."""

    def __init__(self, concurrency: int, per_minute: float | None) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self._per_minute = per_minute
        self._tokens = float(concurrency)
        self._refilled = time.monotonic()
        self._paused_until = 0.0
        self.in_flight = 0
        self.peak = 0
        """The most calls at once this limiter let through (tests and `hal doctor`)."""

    def pause(self, seconds: float) -> None:
        """Open the circuit: no new call starts for ``seconds``."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def _wait_circuit(self) -> None:
        # A deadline that only moves later: sleeping to it (and re-checking) is exact.
        while (delay := self._paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    async def _wait_bucket(self) -> None:
        if self._per_minute is None:
            return
        rate = self._per_minute / 60.0
        while True:
            now = time.monotonic()
            burst = max(1.0, float(self.concurrency))
            self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / rate)

    async def acquire(self) -> None:
        """Wait for the circuit, a rate token and a concurrency slot."""
        await self._wait_circuit()
        await self._wait_bucket()
        await self._slots.acquire()
        try:
            await self._wait_circuit()  # a storm may have begun while this call queued
        except BaseException:
            self._slots.release()
            raise
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def release(self) -> None:
        """A call ended (its slot goes to the next waiter)."""
        self.in_flight -= 1
        self._slots.release()
