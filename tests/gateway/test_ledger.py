"""The ledger's group commit: every row reaches the store, drain never spins, the caller's
future resolves only once its row is committed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.test_proxy import KEY, call, client, gateway, grant_for, upstream
from tests.gateway.upstream import StormUpstream

from hal9999.gateway import ledger as ledger_module
from hal9999.gateway.ledger import Ledger
from hal9999.gateway.proxy import Gateway
from hal9999.store import Store
from hal9999.store.gateway import GatewayRequest

__all__ = ["gateway", "upstream"]


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


async def test_a_task_refused_for_unrecorded_spend_is_served_again_once_it_is_recorded(
    gateway: tuple[Gateway, str], upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task whose row the store refused was refused until the gateway restarted, though the
    # store healed a second later: the refused rows are now written again on its next call.
    broken = True

    def failing(real: Any) -> Any:
        def add(self: Any, rows: Any) -> Any:
            if broken:
                raise sqlite3.OperationalError("disk I/O error")
            return real(self, rows)
        return add

    for cls, name in [(Store, "add_gateway_requests"), (Store, "add_gateway_request"),
                      (ledger_module._Writer, "add_gateway_requests"),
                      (ledger_module._Writer, "add_one")]:  # fmt: skip
        monkeypatch.setattr(cls, name, failing(getattr(cls, name)))
    monkeypatch.setattr(ledger_module, "RETRY_S", 0.0)
    gw, sock = gateway
    grant = grant_for(upstream, "t1", max_tokens=1000)
    gw.register(grant)
    async with client(sock) as http:
        with pytest.raises(httpx.HTTPError):  # withheld: its spend is not in the store
            await call(http, grant.token)
    async with client(sock) as http:
        # Still broken: the write is tried again and fails, the call is refused (fail closed).
        refused = await call(http, grant.token)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "gateway_error"
        assert len(upstream.seen) == 1
        broken = False
        served = await call(http, grant.token)
    assert served.status_code == 200
    assert [s.headers["x-api-key"] for s in upstream.seen] == [KEY, KEY]
    await gw.drain()
    rows = gw.store.gateway_requests("t1")
    # The withheld call and the refusal, written on recovery (in either order: the refusal's
    # own write may still be queued when the store heals), and the call served.
    assert sorted((r.status, r.error or "", r.total_tokens) for r in rows) == [
        (200, "", 23), (200, "", 23), (400, "gateway_error", 0)]  # fmt: skip
    assert gw.store.gateway_spent(task_id="t1")[0] == 46 == gw.ledger.task_spent("t1")[0]
    assert gw.ledger.unrecorded == {}
