"""A run gives its sandbox back without waiting for the reset (the follower of a
task waited for the reset after its ``task_end``); the pool hands it out only once reset."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.support.pool import make, spec_of

from hal9999.pool import lending
from hal9999.store import Store
from hal9999.tasks.sandboxes import PoolSource


async def test_a_run_returns_its_sandbox_before_the_reset_and_none_claims_it_meanwhile(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "hal.db")
    provider, pool = make(tmp_path, store)
    source = PoolSource(pool)
    lease = await source.acquire(provider, spec_of(tmp_path, 1), "t1")
    assert lease is not None
    assert await asyncio.wait_for(source.release(lease.sandbox, reuse=True), 5)
    assert provider.resets == 0  # the release did not wait for it
    assert [e.state for e in pool.entries] == ["resetting"]
    claim = asyncio.create_task(pool.claim(spec_of(tmp_path, 2), task_id="t2"))
    await asyncio.sleep(0.05)
    assert not claim.done(), "a sandbox still resetting was handed out"
    provider.gate.set()
    again = await asyncio.wait_for(claim, 5)
    assert again.warm and again.sandbox.id == lease.sandbox.id and provider.resets == 1
    await pool.release(again)
    await pool.close()
    # Rows: one write when it was leased, one each time it went idle (none for the reset).
    assert [(r.state, r.task_id) for r in store.list_sandboxes()] == [("idle", None)]
    store.close()


async def test_a_pool_drained_during_a_background_reset_destroys_it_at_close(
    tmp_path: Path,
) -> None:
    provider, pool = make(tmp_path)
    source = PoolSource(pool)
    lease = await source.acquire(provider, spec_of(tmp_path, 1), "t1")
    assert lease is not None
    await source.release(lease.sandbox, reuse=True)
    assert await pool.drain() == 0  # nothing idle yet
    provider.gate.set()
    await pool.close()
    assert provider.destroyed == [lease.sandbox.id] and pool.entries == []


async def test_a_reset_nobody_waits_for_waits_out_its_grace_unless_a_claim_wants_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reset's first steps ran alongside the answer to the run's follower;
    # a claim of the sandbox's key that finds none idle starts the reset at once.
    monkeypatch.setattr(lending, "RESET_GRACE_S", 3600.0)  # only a claim can start it here
    provider, pool = make(tmp_path, max_size=2)
    provider.gate.set()
    source = PoolSource(pool)
    lease = await source.acquire(provider, spec_of(tmp_path, 1), "t1")
    assert lease is not None
    assert await source.release(lease.sandbox, reuse=True)
    await asyncio.sleep(0.05)  # turns of the loop, ample for a reset that started
    assert provider.resets == 0 and [e.state for e in pool.entries] == ["resetting"]
    other = await pool.claim(spec_of(tmp_path, 2), task_id="t2")  # room: a new one
    assert not other.warm

    async def reset_done() -> None:
        while pool.entries[0].state != "idle":
            await asyncio.sleep(0.01)

    await asyncio.wait_for(reset_done(), 10)  # started by the claim, not the grace
    assert provider.resets == 1 and [e.state for e in pool.entries] == ["idle", "leased"]
    await pool.release(other)
    await pool.close()
