"""The pool primes a new idle sandbox of a provider that asks for it (a microVM's first
command pays for translating its command path; a root hal's bwrap sandbox gets its keeper),
and destroys one whose priming fails instead of handing it out; a reset sandbox is
primed again unless a claim waits for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hal9999.errors import ProviderError
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.providers.base import SandboxPrime
from hal9999.providers.bwrap.provider import BwrapProvider
from hal9999.providers.fake.provider import FakeProvider
from hal9999.providers.qemu.provider import QemuProvider
from hal9999.spec import SandboxSpec


class Primed(FakeProvider):
    """The fake provider, with a priming hook that records its sandboxes (or fails)."""

    def __init__(self, state_dir: Path, *, fail: bool = False) -> None:
        super().__init__(state_dir=state_dir)
        self.fail = fail
        self.primed: list[str] = []
        self.destroyed: list[str] = []

    async def prime(self, sandbox_id: str) -> None:
        self.primed.append(sandbox_id)
        if self.fail:
            raise ProviderError(f"sandbox {sandbox_id} failed its first command")

    async def destroy(self, sandbox_id: str) -> None:
        self.destroyed.append(sandbox_id)
        await super().destroy(sandbox_id)


def make(tmp_path: Path, provider: FakeProvider) -> WarmPool:
    settings = ProviderSettings.model_validate({"max_size": 2})
    return WarmPool(
        providers=lambda name: provider,
        settings=lambda name: settings,
        slots=SlotDir(tmp_path / "slots"),
    )


def spec_of(tmp_path: Path) -> SandboxSpec:
    (tmp_path / "workspace").mkdir(exist_ok=True)
    return SandboxSpec(provider="fake", workspace=tmp_path / "workspace")


def test_qemu_and_bwrap_prime_and_the_others_do_not() -> None:
    assert issubclass(QemuProvider, SandboxPrime)
    assert issubclass(BwrapProvider, SandboxPrime)
    assert not hasattr(FakeProvider, "prime")


async def test_warm_sandboxes_are_primed_before_they_are_idle(tmp_path: Path) -> None:
    provider = Primed(tmp_path / "state")
    pool = make(tmp_path, provider)
    assert await pool.warm(spec_of(tmp_path), 2) == 2
    idle = [e.id for e in pool.entries if e.state == "idle"]
    assert sorted(provider.primed) == sorted(idle) and len(idle) == 2
    lease = await pool.claim(spec_of(tmp_path))
    assert lease.warm and lease.sandbox.id in provider.primed
    await pool.release(lease)
    await pool.drain()


async def test_a_sandbox_whose_priming_fails_is_destroyed_not_pooled(tmp_path: Path) -> None:
    provider = Primed(tmp_path / "state", fail=True)
    pool = make(tmp_path, provider)
    with pytest.raises(ProviderError, match="could not create warm"):
        await pool.warm(spec_of(tmp_path), 1)
    assert provider.primed and provider.destroyed == provider.primed
    assert pool.entries == []


async def test_a_reset_sandbox_is_primed_again_when_nobody_waits(tmp_path: Path) -> None:
    provider = Primed(tmp_path / "state")
    pool = make(tmp_path, provider)
    assert await pool.warm(spec_of(tmp_path), 1) == 1
    lease = await pool.claim(spec_of(tmp_path))
    await pool.release(lease)
    assert provider.primed == [lease.sandbox.id, lease.sandbox.id]
    await pool.drain()


async def test_a_reset_sandbox_a_claim_waits_for_is_handed_over_unprimed(tmp_path: Path) -> None:
    provider = Primed(tmp_path / "state")
    settings = ProviderSettings.model_validate({"max_size": 1})
    pool = WarmPool(
        providers=lambda name: provider,
        settings=lambda name: settings,
        slots=SlotDir(tmp_path / "slots"),
    )
    assert await pool.warm(spec_of(tmp_path), 1) == 1
    first = await pool.claim(spec_of(tmp_path))
    waiting = asyncio.ensure_future(pool.claim(spec_of(tmp_path)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await pool.release(first)
    second = await asyncio.wait_for(waiting, 5)
    assert second.sandbox.id == first.sandbox.id
    assert provider.primed == [first.sandbox.id], "primed when warmed, not after the reset"
    await pool.release(second)
    await pool.drain()


async def test_a_failed_prime_after_a_reset_keeps_the_sandbox(tmp_path: Path) -> None:
    provider = Primed(tmp_path / "state")
    pool = make(tmp_path, provider)
    assert await pool.warm(spec_of(tmp_path), 1) == 1
    lease = await pool.claim(spec_of(tmp_path))
    provider.fail = True
    await pool.release(lease)
    assert [e.id for e in pool.entries if e.state == "idle"] == [lease.sandbox.id]
    assert provider.destroyed == []
    await pool.drain()


@pytest.mark.bwrap
async def test_a_keepers_start_takes_no_asyncio_subprocess_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The keeper's launcher through create_subprocess_exec and communicate
    # cost twice the daemon's CPU a prime that procs.run_captured does.
    from tests.security.conftest import require_keeper

    from hal9999.providers.bwrap import keeper

    (tmp_path / "ws").mkdir()
    provider = BwrapProvider(state_dir=tmp_path / "state")
    sandbox = await provider.create(SandboxSpec(provider="bwrap", workspace=tmp_path / "ws"))
    try:
        require_keeper(provider, sandbox.id)
        calls: list[object] = []
        original = asyncio.base_events.BaseEventLoop.subprocess_exec

        def counted(self: object, *args: object, **kwargs: object) -> object:
            calls.append(args)
            return original(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "subprocess_exec", counted)
        await provider.prime(sandbox.id)
        assert keeper.read(provider.store.dir(sandbox.id) / "run") is not None
        assert calls == []
    finally:
        await provider.destroy(sandbox.id)


@pytest.mark.bwrap
async def test_a_keepers_start_cancelled_anywhere_leaves_no_keeper_after_the_destroy(
    tmp_path: Path,
) -> None:
    # run_captured kills the launcher's group when its caller is cancelled (asyncio's
    # communicate left it running): a keeper it had started but not yet recorded lives on,
    # as when hal dies mid-start (the launcher's --parent), until the sandbox's destroy
    # finds it by its marker. Here short delays left such a keeper (three marked
    # processes, no record), longer ones a recorded keeper, none nothing.
    from tests.security.conftest import require_keeper

    from hal9999.providers.bwrap import keeper
    from hal9999.providers.host import exec as hostexec

    (tmp_path / "ws").mkdir()
    provider = BwrapProvider(state_dir=tmp_path / "state")
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05):
        sandbox = await provider.create(SandboxSpec(provider="bwrap", workspace=tmp_path / "ws"))
        marker = str(provider.store.dir(sandbox.id)).encode()
        try:
            require_keeper(provider, sandbox.id)
            prime = asyncio.ensure_future(provider.prime(sandbox.id))
            await asyncio.sleep(delay)
            prime.cancel()
            await asyncio.gather(prime, return_exceptions=True)
        finally:
            await provider.destroy(sandbox.id)
        await asyncio.sleep(0.2)  # a launcher killed mid-fork: its child is gone by now
        left = [pid for pid, value in hostexec.environ_values(keeper.MARKER_VAR) if value == marker]
        assert left == [], delay
