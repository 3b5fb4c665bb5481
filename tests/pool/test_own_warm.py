"""Providers that keep their warm sandboxes themselves (kubernetes' free pods): the pool asks
them for the count in ``hal pool status`` and for a drain, also after a daemon restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hal9999.errors import CloudServerError, UnknownProvider
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.providers.base import OwnWarmPool
from hal9999.providers.fake.provider import FakeProvider
from hal9999.spec import SandboxSpec


class KeepsItsOwn(FakeProvider):
    """The fake provider with warm sandboxes of its own, like kubernetes' free pods (they
    live outside the pool, and outlive it)."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.free = 0
        self.unreachable = False

    async def fill_warm(self, count: int) -> int:
        made = max(0, count - self.free)
        self.free += made
        return made

    async def drain_warm(self) -> int:
        drained, self.free = self.free, 0
        return drained

    async def warm_count(self) -> int:
        if self.unreachable:
            raise CloudServerError("the cluster did not answer", hint="check the API server")
        return self.free


def make_pool(tmp_path: Path, provider: FakeProvider | Callable[[str], FakeProvider]) -> WarmPool:
    """A pool over ``provider`` (or what ``provider(name)`` loads) in ``tmp_path``."""
    return WarmPool(
        providers=provider if callable(provider) else lambda name: provider,
        settings=lambda name: ProviderSettings(),
        slots=SlotDir(tmp_path / "pool"),
    )


async def test_status_counts_the_providers_own_warm_sandboxes(tmp_path: Path) -> None:
    provider = KeepsItsOwn(tmp_path / "state")
    assert isinstance(provider, OwnWarmPool)
    pool = make_pool(tmp_path, provider)
    assert (await pool.full_status())["own_warm"] == {}  # never warmed: nothing to ask
    assert await pool.warm(SandboxSpec(provider="fake"), 3) == 3
    status = await pool.full_status()
    assert status["own_warm"] == {"fake": {"free": 3}}
    assert status["providers"] == {}  # none of them is the pool's


async def test_a_restarted_pool_still_reports_and_drains_them(tmp_path: Path) -> None:
    provider = KeepsItsOwn(tmp_path / "state")
    await make_pool(tmp_path, provider).warm(SandboxSpec(provider="fake"), 2)
    later = make_pool(tmp_path, provider)  # the next daemon of the same home
    assert (await later.full_status())["own_warm"] == {"fake": {"free": 2}}
    assert await later.drain() == 2
    assert provider.free == 0


async def test_a_provider_that_cannot_count_does_not_hide_the_pool(tmp_path: Path) -> None:
    provider = KeepsItsOwn(tmp_path / "state")
    pool = make_pool(tmp_path, provider)
    await pool.warm(SandboxSpec(provider="fake"), 1)
    provider.unreachable = True
    status = await pool.full_status()
    assert status["own_warm"] == {
        "fake": {"error": "the cluster did not answer (check the API server)"}
    }
    assert status["paused"] is False


async def test_a_provider_that_no_longer_loads_is_named_not_fatal(tmp_path: Path) -> None:
    provider = KeepsItsOwn(tmp_path / "state")
    await make_pool(tmp_path, provider).warm(SandboxSpec(provider="fake"), 1)

    def gone(name: str) -> FakeProvider:
        raise UnknownProvider(f"no provider named {name!r}", hint="available: bwrap")

    status = await make_pool(tmp_path, gone).full_status()
    assert status["own_warm"] == {"fake": {"error": "no provider named 'fake' (available: bwrap)"}}
