"""The gateway's record of every call: durable in the store before the agent has its answer.

Budgets and counters live in the store: a call's row is committed before the last byte of its
response reaches the agent (see :meth:`Gateway._relay`), so a gateway killed at any moment has
lost no spend that an agent saw, and a new gateway reads the truth back from the store. The
commits are grouped: while one transaction runs (in the ledger's own thread, never on the
event loop), every row that arrives waits for the next one, so under load one commit covers
many calls and an idle gateway commits at once, with no timer to wait for.

The spend per task and per UTC day is also kept in memory, read from the store once and then
advanced by this process, which is the only writer of this HAL_HOME's calls (one gateway per
HAL_HOME, held by its lock).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from hal9999.store import Store
from hal9999.store.gateway import GatewayRequest

logger = logging.getLogger(__name__)


class Ledger:
    """Spend per task and per day, and the group commit of call rows."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.spent: dict[str, tuple[int, float]] = {}
        """Tokens and dollars per task so far (read from the store once, then advanced)."""
        self.day: tuple[float, int, float] | None = None
        """The current UTC day's start, tokens and dollars over all tasks."""
        self._queue: list[GatewayRequest] = []
        self._queued: asyncio.Future[None] | None = None
        """Resolved once the rows now in the queue are committed."""
        self._writing: asyncio.Future[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hal-ledger")

    def task_spent(self, task_id: str) -> tuple[int, float]:
        """Tokens and dollars of ``task_id`` so far."""
        if task_id not in self.spent:
            self.spent[task_id] = self.store.gateway_spent(task_id=task_id)
        return self.spent[task_id]

    def day_spent(self) -> tuple[int, float]:
        """Tokens and dollars of today (UTC) over every task of this HAL_HOME."""
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.day is None or self.day[0] != midnight.timestamp():
            tokens, cost = self.store.gateway_spent(since=midnight.timestamp())
            self.day = (midnight.timestamp(), tokens, cost)
        return self.day[1], self.day[2]

    def add(self, record: GatewayRequest) -> asyncio.Future[None] | None:
        """Count ``record`` and queue it; the future resolves once it is committed (None:
        written already, there being no event loop)."""
        cost = record.cost_usd or 0.0
        if self.day is not None and record.ts >= self.day[0]:
            start, tokens, dollars = self.day
            self.day = (start, tokens + record.total_tokens, dollars + cost)
        if record.task_id in self.spent:
            tokens, dollars = self.spent[record.task_id]
            self.spent[record.task_id] = (tokens + record.total_tokens, dollars + cost)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._commit([record])
            return None
        self._queue.append(record)
        if self._queued is None:
            self._queued = loop.create_future()
        queued = self._queued
        if self._writing is None:
            self._start(loop)
        return queued

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, done = self._queue, self._queued
        self._queue, self._queued = [], None
        self._writing = loop.run_in_executor(self._thread, self._commit, batch)
        self._writing.add_done_callback(lambda _: self._written(loop, done))

    def _written(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None] | None) -> None:
        self._writing = None
        if done is not None and not done.done():
            done.set_result(None)
        if self._queue:
            self._start(loop)

    def _commit(self, records: list[GatewayRequest]) -> None:
        try:
            self.store.add_gateway_requests(records)
            return
        except Exception:
            logger.exception("gateway: could not record %d calls at once", len(records))
        for record in records:  # one bad row must not lose the others
            try:
                self.store.add_gateway_request(record)
            except Exception:
                logger.exception("gateway: could not record a call of task %s", record.task_id)

    async def drain(self) -> None:
        """Wait until every call so far is in the store."""
        while self._writing is not None or self._queued is not None:
            waiting = self._queued or self._writing
            assert waiting is not None
            await asyncio.shield(waiting)
            # A finished write's own callback (which starts the next batch) runs in a later
            # turn of the loop: awaiting a done future does not yield, so yield here.
            await asyncio.sleep(0)

    def close(self) -> None:
        """Stop the ledger's thread (after :meth:`drain`)."""
        self._thread.shutdown(wait=True)
