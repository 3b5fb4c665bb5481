"""The ledger's group commit: every row reaches the store, drain never spins, the caller's
future resolves only once its row is committed."""

from __future__ import annotations

import asyncio
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
