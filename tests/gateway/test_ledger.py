"""The ledger's group commit: every row reaches the store, drain never spins, the caller's
future resolves only once its row is committed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import KEY, call, client, grant_for

from hal9999 import agentfs
from hal9999.gateway import ledger as ledger_module
from hal9999.gateway.ledger import Ledger
from hal9999.gateway.proxy import Gateway
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
    # A wait for the lock would last an hour; only the watchdog (after a generous 60 s) would
    # end it, and say so: the loop that got past its sleep first never waited for the lock.
    store = Store.open(tmp_path / "home", busy_timeout_s=3600.0)
    ledger = Ledger(store)
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    released: list[bool] = []

    def release() -> None:
        released.append(True)
        other.execute("COMMIT")

    watchdog = threading.Timer(60, release)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing
        watchdog.start()
        committed = ledger.add(row(1))
        assert committed is not None
        await asyncio.sleep(0.2)
        watchdog.cancel()
        assert not released, "the loop waited for the database lock"
        assert not committed.done(), "resolved before its row could be committed"
        later = ledger.add(row(2))  # queued behind the batch the thread is waiting to write
        other.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(committed, later), 60)
        await asyncio.wait_for(ledger.drain(), 60)
        assert [r.path for r in store.gateway_requests("t")] == ["/1", "/2"]
        assert ledger.handed_off >= 1
    finally:
        watchdog.cancel()
        other.close()
        ledger.close()
        store.close()


def break_the_store(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Make every write of call rows fail (disk I/O error) while the flag says broken."""
    state = {"broken": True}

    def failing(real: Any) -> Any:
        def add(self: Any, rows: Any) -> Any:
            if state["broken"]:
                raise sqlite3.OperationalError("disk I/O error")
            return real(self, rows)

        return add

    for cls, name in [(Store, "add_gateway_requests"), (Store, "add_gateway_request"),
                      (ledger_module._Writer, "add_gateway_requests"),
                      (ledger_module._Writer, "add_one")]:  # fmt: skip
        monkeypatch.setattr(cls, name, failing(getattr(cls, name)))
    monkeypatch.setattr(ledger_module, "RETRY_S", 0.0)
    return state


async def test_a_task_refused_for_unrecorded_spend_is_served_again_once_it_is_recorded(
    gateway: tuple[Gateway, str], upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task whose row the store refused was refused until the gateway restarted, though the
    # store healed a second later: the refused rows are now written again on its next call.
    store_state = break_the_store(monkeypatch)
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
        store_state["broken"] = False
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


@contextlib.asynccontextmanager
async def serving(home: Path, sock: str) -> AsyncIterator[Gateway]:
    """A gateway over ``home`` on ``sock``, stopped as a killed one stops: nothing drained."""
    store = Store.open(home)
    gw = Gateway(store)
    try:
        async with await asyncio.start_unix_server(gw.serve_connection, path=sock):
            yield gw
    finally:
        await gw.aclose()
        store.close()


async def test_spend_the_store_refused_survives_a_restart_and_its_task_stays_refused(
    tmp_path: Path, sock_dir: Path, upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refused rows lived only in the gateway's memory: a restart forgot them, so the
    # task was served again and its spend (and budget) never counted that call.
    home, sock = tmp_path / "home", str(sock_dir / "llm.sock")
    kept = home / "gateway" / "unrecorded.jsonl"
    store_state = break_the_store(monkeypatch)
    grant = grant_for(upstream, "t1", max_tokens=40)  # 23 tokens a call
    async with serving(home, sock) as gw:
        gw.register(grant)
        async with client(sock) as http:
            with pytest.raises(httpx.HTTPError):  # withheld: its spend is not in the store
                await call(http, grant.token)
        assert kept.exists() and kept.stat().st_mode & 0o777 == 0o600
    async with serving(home, sock) as gw:  # restarted, the store still refusing
        gw.register(grant)
        async with client(sock) as http:
            refused = await call(http, grant.token)
        assert refused.status_code == 400, "served though its spend is not in the store"
        assert refused.json()["error"]["code"] == "gateway_error"
        assert len(upstream.seen) == 1
    store_state["broken"] = False
    before = kept.read_bytes()
    async with serving(home, sock) as gw:  # restarted, the store healed: the rows go in
        assert not kept.exists() and gw.ledger.unrecorded == {}
        gw.register(grant)
        async with client(sock) as http:
            served = await call(http, grant.token)  # 23 < 40
            over = await call(http, grant.token)  # 46: the kept call counts
        assert served.status_code == 200
        assert over.json()["error"]["code"] == "budget_exceeded"
        await gw.drain()
        rows = sorted((r.status, r.error or "", r.total_tokens)
                      for r in gw.store.gateway_requests("t1"))  # fmt: skip
    assert rows == [(200, "", 23), (200, "", 23), (400, "budget_exceeded", 0),
                    (400, "gateway_error", 0)]  # fmt: skip
    # Killed after it stored the kept rows but before it removed their file: the next
    # gateway finds them in the store and does not count them twice.
    kept.write_bytes(before)
    async with serving(home, sock) as gw:
        assert not kept.exists() and gw.ledger.unrecorded == {}
        assert gw.ledger.task_spent("t1")[0] == 46
        assert len(gw.store.gateway_requests("t1")) == 4


class Killed(BaseException):
    """The gateway's process dying where this is raised."""


def kept_rows(spill: Path, tasks: int) -> list[GatewayRequest]:
    """Two rows of each of ``tasks`` tasks, written to ``spill`` as a stopped gateway left
    them."""
    rows = [GatewayRequest(task_id=f"t{n}", ts=1000.0 + n, method="POST", path=f"/{n}/{k}",
                           status=200, latency_ms=1.0, total_tokens=1)
            for n in range(tasks) for k in range(2)]  # fmt: skip
    spill.parent.mkdir(parents=True)
    spill.write_bytes(b"".join(r.model_dump_json(exclude={"id"}).encode() + b"\n" for r in rows))
    return rows


def count_rewrites(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record each replacement of a file by agentfs.write_host_file."""
    written: list[Path] = []
    real = agentfs.write_host_file

    def write_host_file(dest: Path, chunks: Any, **kwargs: Any) -> int:
        written.append(dest)
        return real(dest, chunks, **kwargs)

    monkeypatch.setattr(agentfs, "write_host_file", write_host_file)
    return written


@pytest.mark.parametrize("broken", [True, False], ids=["store-refusing", "store-healed"])
def test_a_start_rewrites_the_kept_rows_once_whatever_their_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    # The replay at start rewrote the file of kept rows once per task (an fsync'd write and
    # rename each) and once more at the end: N + 1 rewrites for N tasks' rows.
    home, tasks = tmp_path / "home", 6
    spill = home / "gateway" / "unrecorded.jsonl"
    rows = kept_rows(spill, tasks)
    break_the_store(monkeypatch)["broken"] = broken
    written = count_rewrites(monkeypatch)
    store = Store.open(home)
    ledger = Ledger(store, spill)
    try:
        if broken:  # all kept, in one rewrite
            assert written == [spill]
            assert sorted(ledger.unrecorded) == [f"t{n}" for n in range(tasks)]
            assert spill.read_bytes().count(b"\n") == len(rows)
        else:  # all stored: the file goes, never rewritten
            assert written == [] and not spill.exists() and ledger.unrecorded == {}
            assert sum(len(store.gateway_requests(f"t{n}")) for n in range(tasks)) == len(rows)
    finally:
        ledger.close()
        store.close()


def test_a_gateway_killed_mid_replay_loses_no_kept_row_and_stores_none_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file is rewritten only once every task's rows were tried: a gateway killed before
    # that leaves them all in it, and the next one skips those already stored.
    home, tasks = tmp_path / "home", 4
    spill = home / "gateway" / "unrecorded.jsonl"
    rows = kept_rows(spill, tasks)
    real = Store.add_gateway_requests

    def dies_at_the_third_task(self: Store, batch: list[GatewayRequest]) -> None:
        if batch[0].task_id == "t2":
            raise Killed
        real(self, batch)

    monkeypatch.setattr(Store, "add_gateway_requests", dies_at_the_third_task)
    store = Store.open(home)
    try:
        with pytest.raises(Killed):
            Ledger(store, spill)
        kept = [GatewayRequest.model_validate_json(line).path
                for line in spill.read_bytes().splitlines()]  # fmt: skip
        assert all(r.path in kept or store.gateway_request_stored(r) for r in rows), (
            "a kept row neither in the file nor in the store"
        )
        monkeypatch.setattr(Store, "add_gateway_requests", real)
        ledger = Ledger(store, spill)
        ledger.close()
        stored = sorted(r.path for n in range(tasks) for r in store.gateway_requests(f"t{n}"))
        assert stored == sorted(r.path for r in rows), "a kept row lost or stored twice"
        assert not spill.exists()
    finally:
        store.close()


async def test_an_error_other_than_sqlites_on_the_loop_leaves_no_caller_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The loop's commit caught only sqlite3.Error: any other (a value SQLite cannot bind)
    # left the batch's callers waiting for ever and the rows unwritten.
    def unbindable(self: Any, rows: Any) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(ledger_module._Writer, "add_one", unbindable)
    monkeypatch.setattr(ledger_module._Writer, "add_gateway_requests", unbindable)
    store = Store.open(tmp_path / "home")
    ledger = Ledger(store)
    try:
        committed = ledger.add(row(1))
        assert committed is not None
        await asyncio.wait_for(committed, 5)  # stored by the ledger's thread instead
        later = ledger.add(row(2))
        assert later is not None
        await asyncio.wait_for(later, 5)
        await asyncio.wait_for(ledger.drain(), 5)
        assert [r.path for r in store.gateway_requests("t")] == ["/1", "/2"]
        assert ledger.unrecorded == {}
        assert "too large" in caplog.text
    finally:
        ledger.close()
        store.close()


async def test_an_unforeseen_error_in_the_thread_refuses_the_task_and_keeps_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An exception the thread's write did not foresee resolved the callers as if stored:
    # the rows were gone, their task served on, and nobody was told.
    real = Ledger._store

    def broken(self: Ledger, records: list[GatewayRequest]) -> Any:
        if any(r.task_id == "bad" for r in records):
            raise RuntimeError("unforeseen")
        return real(self, records)

    monkeypatch.setattr(Ledger, "_store", broken)
    spill = tmp_path / "home" / "gateway" / "unrecorded.jsonl"
    store = Store.open(tmp_path / "home")
    ledger = Ledger(store, spill)
    ledger._fast = False  # every batch goes to the thread
    try:
        bad = row(1)
        bad.task_id = "bad"
        committed = ledger.add(bad)
        assert committed is not None
        await asyncio.wait_for(committed, 5)
        assert ledger.unrecorded == {"bad": "unforeseen"}, "served on, its row lost"
        assert [GatewayRequest.model_validate_json(line).path
                for line in spill.read_bytes().splitlines()] == ["/1"]  # fmt: skip
        assert ledger.task_spent("bad") == (1, 0.0)
        assert "could not record 1 calls" in caplog.text
        later = ledger.add(row(2))  # the writer goes on
        assert later is not None
        await asyncio.wait_for(later, 5)
        assert [r.path for r in store.gateway_requests("t")] == ["/2"]
    finally:
        ledger.close()
        store.close()


async def test_rows_that_cannot_be_kept_are_reported_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Keeping refused rows caught only OSError: another error left the thread's future
    # failed, never looked at, and the operator without a line saying the rows would not
    # survive a restart.
    break_the_store(monkeypatch)

    def unwritable(dest: Path, chunks: Any, **kwargs: Any) -> int:
        raise ValueError("cannot serialise")

    monkeypatch.setattr(agentfs, "write_host_file", unwritable)
    spill = tmp_path / "home" / "gateway" / "unrecorded.jsonl"
    store = Store.open(tmp_path / "home")
    ledger = Ledger(store, spill)
    try:
        committed = ledger.add(row(1))
        assert committed is not None
        await asyncio.wait_for(committed, 5)
        assert ledger.unrecorded == {"t": "disk I/O error"}
        assert "could not keep 1 unrecorded calls" in caplog.text
        assert ledger.task_spent("t") == (1, 0.0)
    finally:
        ledger.close()
        store.close()


async def test_a_closed_ledger_tells_its_callers_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A batch that could not be handed to the thread (shut down) left its callers waiting.
    store = Store.open(tmp_path / "home")
    ledger = Ledger(store)
    ledger._fast = False  # every batch goes to the thread
    ledger.close()
    try:
        committed = ledger.add(row(1))
        assert committed is not None
        with pytest.raises(RuntimeError, match="shutdown"):
            await asyncio.wait_for(committed, 5)
        await asyncio.wait_for(ledger.drain(), 5)
        assert "1 calls could not be handed to the store" in caplog.text
    finally:
        store.close()
