"""The ledger's group commit: every row reaches the store, drain never spins, the caller's
future resolves only once its row is committed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from hal9999.gateway.ledger import Ledger
from hal9999.store import Store
from hal9999.store.gateway import GatewayRequest


def row(n: int) -> GatewayRequest:
    return GatewayRequest(task_id="t", ts=time.time(), method="POST", path=f"/{n}",
                          status=200, latency_ms=0.0, total_tokens=1)  # fmt: skip


async def test_rows_are_committed_in_groups_and_drain_returns(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    ledger = Ledger(store)
    try:
        for n in range(300):
            committed = ledger.add(row(n))
            assert committed is not None
            if n % 3 == 0:
                await committed
                assert len(store.gateway_requests("t")) >= n + 1, "resolved before its commit"
            if n % 7 == 0:
                # Drain at every phase of a write (queued, running, finished but not yet told).
                await asyncio.sleep(0.0005 * (n % 5))
                await asyncio.wait_for(ledger.drain(), 5)
        await asyncio.wait_for(ledger.drain(), 5)
        assert [r.path for r in store.gateway_requests("t")] == [f"/{n}" for n in range(300)]
        assert ledger.task_spent("t") == (300, 0.0)
    finally:
        ledger.close()
        store.close()


def ledger_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("hal-ledger")]


async def test_a_call_at_a_time_commits_on_the_loop_without_a_thread_hop(tmp_path: Path) -> None:
    # Handing each row to a thread cost more CPU (GIL hand-off, wake-ups) than the commit
    # itself: with the lock free, one commit per call, made on the loop, and no thread.
    store = Store.open(tmp_path / "home")
    ledger = Ledger(store)
    try:
        for n in range(20):
            committed = ledger.add(row(n))
            assert committed is not None
            await asyncio.wait_for(committed, 5)
        assert len(store.gateway_requests("t")) == 20
        assert (ledger.commits, ledger.handed_off) == (20, 0), "one store write per call"
        assert ledger_threads() == [], "a thread hop per call"
        for n in range(20, 30):  # rows added in one turn of the loop share one commit
            committed = ledger.add(row(n))
        await asyncio.wait_for(committed, 5)
        assert ledger.commits == 21
    finally:
        ledger.close()
        store.close()


async def test_a_locked_store_never_holds_up_the_loop(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    ledger = Ledger(store)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing (the store's busy timeout: 5 s)
        committed = ledger.add(row(1))
        assert committed is not None
        started = time.monotonic()
        await asyncio.sleep(0.2)
        assert time.monotonic() - started < 2.5, "the loop waited for the database lock"
        assert not committed.done(), "resolved before its row could be committed"
        later = ledger.add(row(2))  # queued behind the batch the thread is waiting to write
        other.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(committed, later), 10)
        await asyncio.wait_for(ledger.drain(), 5)
        assert [r.path for r in store.gateway_requests("t")] == ["/1", "/2"]
        assert ledger.handed_off >= 1
    finally:
        other.close()
        ledger.close()
        store.close()
