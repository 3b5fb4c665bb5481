"""What a pool reset reads again (issue 16, stop 50): the record its last start saved is taken
as saved while nobody saved the file since, and a sandbox's cgroup object is built once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.providers import cgroups
from hal9999.providers.base import Provider
from hal9999.providers.bwrap import BwrapProvider
from hal9999.providers.fake import FakeProvider
from hal9999.providers.hostsandbox import HostProvider
from hal9999.spec import SandboxSpec


def pool_of(tmp_path: Path, provider: Provider) -> WarmPool:
    settings = ProviderSettings.model_validate({"max_size": 1})
    return WarmPool(
        providers=lambda name: provider,
        settings=lambda name: settings,
        slots=SlotDir(tmp_path / "slots"),
    )


def spec_for(tmp_path: Path, provider: str, n: int) -> SandboxSpec:
    workspace = tmp_path / f"ws{n}"
    workspace.mkdir(exist_ok=True)
    return SandboxSpec(provider=provider, workspace=workspace)


async def cycles(pool: WarmPool, tmp_path: Path, provider: str, count: int) -> str:
    """``count`` claims and resetting releases of the pool's one sandbox; its id."""
    ids = set()
    for n in range(count):
        lease = await pool.claim(spec_for(tmp_path, provider, n))
        ids.add(lease.sandbox.id)
        await pool.release(lease)
    (sandbox_id,) = ids
    return sandbox_id


async def test_a_pool_reset_reads_the_record_only_after_another_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = FakeProvider(state_dir=tmp_path / "state")
    pool = pool_of(tmp_path, provider)
    sandbox_id = await cycles(pool, tmp_path, "fake", 1)
    loads: list[str] = []
    real_load = provider.store.load
    monkeypatch.setattr(provider.store, "load", lambda i: loads.append(i) or real_load(i))
    await cycles(pool, tmp_path, "fake", 3)
    assert loads == []  # one a reset before (the stop's)
    # Another hal process saves the record (here with a state it could not have, to tell
    # which record the stop went by): the next stop reads the file, not what it kept.
    other = FakeProvider(state_dir=tmp_path / "state")
    other.store.save(other.store.load(sandbox_id).model_copy(update={"created_at": 1.0}))
    await cycles(pool, tmp_path, "fake", 1)
    assert loads == [sandbox_id]
    assert real_load(sandbox_id).created_at == 1.0
    await pool.drain()


@pytest.mark.bwrap
@pytest.mark.cgroup
async def test_a_pool_reset_builds_no_cgroup_object_from_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = BwrapProvider(state_dir=tmp_path / "state")
    if provider.cgroup_host() is None:
        pytest.skip("no writable cgroup hierarchy here")
    pool = pool_of(tmp_path, provider)
    sandbox_id = await cycles(pool, tmp_path, "bwrap", 1)
    built: list[Any] = []
    real = cgroups.Cgroup.from_record

    def from_record(record: dict[str, Any]) -> cgroups.Cgroup:
        built.append(record)
        return real(record)

    monkeypatch.setattr(cgroups.Cgroup, "from_record", staticmethod(from_record))
    await cycles(pool, tmp_path, "bwrap", 3)
    assert built == []  # four a reset before (kill, kill again, verify, the handle)
    # A record naming another cgroup gets an object of its own.
    record = provider.store.load(sandbox_id)
    elsewhere = {**record.cgroup, "dirs": ["/sys/fs/cgroup/nowhere"]} if record.cgroup else None
    assert elsewhere is not None
    moved = HostProvider.cgroup(provider, record.model_copy(update={"cgroup": elsewhere}))
    assert moved is not None and [str(d) for d in moved.dirs] == ["/sys/fs/cgroup/nowhere"]
    assert len(built) == 1
    await pool.drain()
