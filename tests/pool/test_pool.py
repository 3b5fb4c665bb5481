"""The warm pool: caps hold under contention, no sandbox is shared, reuse and reaping work."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from hal9999.pool import ProviderSettings, SlotDir, WarmPool, pool_key
from hal9999.providers.fake.provider import FakeProvider, FakeSandbox
from hal9999.spec import ArgvCommand, Bind, Resources, SandboxSpec
from hal9999.store import Store


class CountingProvider(FakeProvider):
    """The fake provider, counting live sandboxes and the most that ever existed at once."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.live = 0
        self.peak = 0
        self.created = 0

    async def create(self, spec: SandboxSpec) -> FakeSandbox:
        self.live += 1
        self.peak = max(self.peak, self.live)
        self.created += 1
        await asyncio.sleep(random.random() / 200)  # creation takes a while, like a real one
        return await super().create(spec)

    async def destroy(self, sandbox_id: str) -> None:
        await super().destroy(sandbox_id)
        self.live -= 1


def task_spec(root: Path, n: int, *, memory: int | None = None) -> SandboxSpec:
    """A spec shaped like a task's: its own workspace and two binds."""
    session = root / f"s{n}"
    for name in ("workspace", "home", "input"):
        (session / name).mkdir(parents=True, exist_ok=True)
    (session / "workspace" / "owner").write_text(str(n))
    return SandboxSpec(
        provider="fake",
        resources=Resources(memory_mb=memory),
        workspace=session / "workspace",
        binds=(
            Bind(source=session / "home", target="/home/hal", read_only=False),
            Bind(source=session / "input", target="/hal", read_only=True),
        ),
        labels={"hal.task": f"t{n}"},
    )


def make_pool(
    tmp_path: Path, provider: FakeProvider, store: Store | None = None, **settings: object
) -> WarmPool:
    values = ProviderSettings.model_validate(settings)
    return WarmPool(
        providers=lambda name: provider,
        settings=lambda name: values,
        slots=SlotDir(tmp_path / "slots"),
        store=store,
    )


async def test_200_concurrent_claims_respect_the_cap_and_never_share(tmp_path: Path) -> None:
    provider = CountingProvider(tmp_path / "state")
    store = Store(tmp_path / "hal.db")
    pool = make_pool(tmp_path, provider, store, max_size=6, key_max_size=4)
    holders: dict[str, int] = {}
    served: list[int] = []

    async def claimer(n: int) -> None:
        # Two shapes of spec, so claims of one key must evict idle sandboxes of the other.
        spec = task_spec(tmp_path / "sessions", n, memory=256 if n % 2 else None)
        lease = await pool.claim(spec, task_id=f"t{n}", timeout=60)
        sandbox_id = lease.sandbox.id
        assert sandbox_id not in holders, f"{sandbox_id} handed to t{holders[sandbox_id]} and t{n}"
        holders[sandbox_id] = n
        assert pool.count("fake") <= 6
        # The sandbox sees this claimer's workspace, not a previous one's.
        seen = await lease.sandbox.exec(ArgvCommand(argv=("cat", "/workspace/owner")))
        assert seen.stdout.decode() == str(n)
        for _ in range(random.randrange(3)):
            await asyncio.sleep(0)
        del holders[sandbox_id]
        served.append(n)
        await pool.release(lease)

    await asyncio.gather(*(claimer(n) for n in range(200)))
    await pool.close()
    assert sorted(served) == list(range(200))
    assert provider.peak <= 6, f"{provider.peak} sandboxes existed at once (cap 6)"
    assert provider.created < 200, "idle sandboxes were reused"
    assert len(await provider.list()) == pool.count("fake") <= 6
    recorded = {(r.id, r.state) for r in store.list_sandboxes()}
    assert recorded == {(e.id, "idle") for e in pool.entries}
    store.close()


async def test_warm_claim_reuses_and_reset_detaches_the_session(tmp_path: Path) -> None:
    provider = CountingProvider(tmp_path / "state")
    pool = make_pool(tmp_path, provider, max_size=2)
    first = task_spec(tmp_path, 1)
    assert await pool.warm(first, 1) == 1
    lease = await pool.claim(first, task_id="t1")
    assert lease.warm and provider.created == 1
    await lease.sandbox.write_file_atomic("/workspace/out.txt", b"work")
    assert (tmp_path / "s1" / "workspace" / "out.txt").read_bytes() == b"work"
    await pool.release(lease)
    again = await pool.claim(task_spec(tmp_path, 2), task_id="t2")
    assert again.warm and again.sandbox.id == lease.sandbox.id
    assert not await again.sandbox.exists("/workspace/out.txt")
    assert (await again.sandbox.read_file("/workspace/owner")) == b"2"
    await pool.release(again)


async def test_destroy_policy_and_drain(tmp_path: Path) -> None:
    provider = CountingProvider(tmp_path / "state")
    pool = make_pool(tmp_path, provider, max_size=3, policy="destroy")
    lease = await pool.claim(task_spec(tmp_path, 1))
    await pool.release(lease)
    assert provider.live == 0 and pool.entries == []

    reset_pool = make_pool(tmp_path, provider, max_size=3)
    assert await reset_pool.warm(task_spec(tmp_path, 2), 5) == 3, "warm stops at the cap"
    held = await reset_pool.claim(task_spec(tmp_path, 3))
    assert await reset_pool.drain() == 2
    await reset_pool.release(held)
    assert provider.live == 0


async def test_idle_reaping_keeps_the_warm_floor(tmp_path: Path) -> None:
    provider = CountingProvider(tmp_path / "state")
    pool = make_pool(tmp_path, provider, max_size=4, key_min_warm=1, idle_timeout_s=10)
    spec = task_spec(tmp_path, 1)
    assert await pool.warm(spec, 3) == 3
    assert await pool.reap_idle() == [], "nothing is past its idle timeout yet"
    reaped = await pool.reap_idle(now=pool.entries[0].last_used_at + 11)
    assert len(reaped) == 2 and provider.live == 1
    await pool.keep_warm({})
    assert provider.live == 1, "the floor is already met"


async def test_claim_times_out_when_everything_is_in_use(tmp_path: Path) -> None:
    provider = CountingProvider(tmp_path / "state")
    pool = make_pool(tmp_path, provider, max_size=1)
    held = await pool.claim(task_spec(tmp_path, 1))
    with pytest.raises(Exception, match="became free"):
        await pool.claim(task_spec(tmp_path, 2), timeout=0.2)
    waiter = asyncio.ensure_future(pool.claim(task_spec(tmp_path, 3), timeout=30))
    await pool.release(held)
    lease = await waiter
    assert lease.sandbox.id == held.sandbox.id
    await pool.release(lease)


def test_pool_key_ignores_per_task_sources_only(tmp_path: Path) -> None:
    a, b = task_spec(tmp_path, 1), task_spec(tmp_path, 2)
    assert pool_key(a) == pool_key(b)
    assert pool_key(a) != pool_key(task_spec(tmp_path, 3, memory=128))
    assert pool_key(a) != pool_key(a.model_copy(update={"network": "host"}))
    assert pool_key(a) != pool_key(a.model_copy(update={"binds": a.binds[:1]}))
