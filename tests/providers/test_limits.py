"""Limits by default: a sandbox with no [resources] is still bounded; ``0`` means unlimited."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hal9999 import hostlimits
from hal9999.providers import limits
from hal9999.providers.bwrap.provider import BwrapConfig, BwrapProvider, BwrapSandbox
from hal9999.spec import Resources, SandboxSpec, ShellCommand


def test_unset_fields_get_the_defaults_and_zero_means_unlimited() -> None:
    memory, pids = limits.host_memory_mb(), hostlimits.host_pids_max()
    assert memory is not None and memory > 0 and pids is not None and pids > 0
    got = limits.effective(Resources())
    # Each default is the total's share of one of the tasks that may run at once (8), the
    # total 75% of the host's (RAM less 1 GiB), within the per-sandbox bounds.
    total_memory, total_pids = int(memory * 0.75) - 1024, int(pids * 0.75)
    assert hostlimits.totals() == (total_memory, total_pids, 8)
    assert got.pids == max(256, min(4096, total_pids // 8))
    assert got.memory_mb == max(limits.MIN_DEFAULT_MEMORY_MB, min(memory // 2, total_memory // 8))
    assert got.cpus == len(os.sched_getaffinity(0))
    assert got.disk_mb == limits.DEFAULT_DISK_MB
    assert got.disk_files == limits.DEFAULT_DISK_FILES
    asked = Resources(pids=0, memory_mb=256, cpus=0, disk_mb=0, disk_files=0)
    assert limits.effective(asked) == Resources(memory_mb=256)
    assert limits.explicit(Resources(pids=10, cpus=0)) == Resources(pids=10)


@pytest.fixture
async def bwrap(hal_home: Path, tmp_path: Path) -> AsyncIterator[tuple[BwrapProvider, Path]]:
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    yield provider, workspace
    for info in await provider.list():
        await provider.destroy(info.id)


def cgroup_values(sandbox: BwrapSandbox) -> dict[str, str]:
    assert sandbox.cgroup is not None
    wanted = {
        "memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us", "cpu.max",
    }  # fmt: skip
    return {
        p.name: p.read_text().strip()
        for d in sandbox.cgroup.dirs
        for p in d.iterdir()
        if p.name in wanted
    }


@pytest.mark.bwrap
@pytest.mark.cgroup
async def test_a_sandbox_without_resources_gets_the_default_limits(
    bwrap: tuple[BwrapProvider, Path],
) -> None:
    provider, workspace = bwrap
    sandbox = await provider.create(SandboxSpec(workspace=workspace))
    assert isinstance(sandbox, BwrapSandbox)
    expected = limits.effective(Resources())
    assert expected.memory_mb is not None and expected.cpus is not None
    values = cgroup_values(sandbox)
    assert expected.pids is not None and values["pids.max"] == str(expected.pids)
    memory = values.get("memory.max") or values["memory.limit_in_bytes"]
    assert memory == str(expected.memory_mb << 20)
    quota = values.get("cpu.max", values.get("cpu.cfs_quota_us", "")).split()[0]
    assert quota == str(round(expected.cpus * 100_000))
    # The per-file limit is the disk limit (ulimit -f counts 1024-byte blocks in bash).
    out = await sandbox.exec(ShellCommand(script="ulimit -f"))
    assert out.text().strip() == str(limits.DEFAULT_DISK_MB << 10)


@pytest.mark.bwrap
@pytest.mark.cgroup
async def test_zero_means_unlimited_and_no_file_outgrows_the_disk_limit(
    bwrap: tuple[BwrapProvider, Path],
) -> None:
    provider, workspace = bwrap
    spec = SandboxSpec(workspace=workspace, resources=Resources(pids=0, cpus=0, disk_mb=1))
    sandbox = await provider.create(spec)
    assert isinstance(sandbox, BwrapSandbox)
    values = cgroup_values(sandbox)
    assert values["pids.max"] == "max"
    assert values.get("cpu.cfs_quota_us", "max") in ("-1", "max")
    assert values.get("cpu.max", "max").split()[0] == "max"
    big = await sandbox.exec(ShellCommand(script="head -c 3000000 /dev/zero > big"))
    assert not big.ok and b"File size limit exceeded" in big.stderr
    # The hard limit is set too: the sandbox cannot lift it.
    lift = await sandbox.exec(ShellCommand(script="ulimit -f unlimited && ulimit -f"))
    assert not lift.ok, lift.text()
    assert (workspace / "big").stat().st_size == 1 << 20


async def test_a_tree_slow_to_walk_is_walked_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``du`` runs at most DISK_CHECK_SHARE of the time for a task: a walk that took
    0.3 s is next due 30 s later, not 10; a quick one keeps the 10 s; never past a minute."""
    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    walks: list[float] = []

    class Watched:
        def __init__(self, walk: float) -> None:
            self.walk = walk

        async def disk_use(self) -> limits.DiskUse:
            walks.append(now[0])
            now[0] += self.walk
            return limits.DiskUse(1, 1 << 30)

    async def walked_at(walk: float, until: float) -> list[float]:
        walks.clear()
        now[0] = 1000.0
        dog = limits.DiskWatchdog(Watched(walk), tmp_path)
        while now[0] < 1000.0 + until:
            await dog.check()
            now[0] += 0.25  # the follower's quiet look
        return [round(b - a) for a, b in itertools.pairwise(walks)]

    quick = await walked_at(0.002, 120)
    assert quick[:3] == [2, 4, 8] and set(quick[4:]) == {10}, quick
    slow = await walked_at(0.3, 300)
    assert slow and set(slow[1:]) == {30}, slow
    huge = await walked_at(5.0, 400)
    assert huge and set(huge[1:]) == {65}, huge  # 5 s of walk, then the 60 s cap


async def test_the_disk_reserve_is_made_once_then_only_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every task's watchdog hopped to a thread to find the reserve already there.
    hops: list[object] = []
    real = asyncio.to_thread

    async def counted(func: Any, *args: Any) -> Any:
        hops.append(func)
        return await real(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", counted)  # limits imports asyncio where used
    monkeypatch.setattr(limits, "free_bytes", lambda path: 1 << 40)
    await limits.DiskWatchdog(None, tmp_path).start()
    assert (tmp_path / limits.BALLAST_NAME).stat().st_size == limits.BALLAST_BYTES
    assert len(hops) == 1
    await limits.DiskWatchdog(None, tmp_path).start()
    assert len(hops) == 1  # reserved already: a stat on the loop, no thread hop


def test_a_providers_limits_are_worked_out_once_and_again_when_the_host_changes(
    hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = BwrapConfig(cgroup="off")
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap", config=config)
    made: list[Resources] = []
    granted = limits.granted

    def counted(resources: Resources, offered: frozenset[str], cpus: float | None = None) -> Any:
        made.append(resources)
        return granted(resources, offered, cpus)

    monkeypatch.setattr(limits, "granted", counted)
    spec = SandboxSpec(workspace=tmp_path, resources=Resources(pids=10))
    first = provider.resources(spec)
    # Each handle and each disk check asks again: the same answer, not worked out again.
    for _ in range(5):
        assert provider.resources(spec) == first
    same = SandboxSpec(workspace=tmp_path, resources=Resources(pids=10))
    assert provider.resources(same) == first
    assert len(made) == 1
    assert first == granted(Resources(pids=10), frozenset())
    assert first.pids == 10 and first.disk_mb == limits.DEFAULT_DISK_MB
    assert first.memory_mb is None  # cgroups off: no controller, no default needing one
    # Other limits asked: worked out for them.
    other = provider.resources(SandboxSpec(workspace=tmp_path, resources=Resources(disk_mb=5)))
    assert other.disk_mb == 5 and len(made) == 2
    # The host's cores changed (taskset): the kept answer is stale and not given.
    cores = os.sched_getaffinity(0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(len(cores) + 3)))
    again = provider.resources(spec)
    assert len(made) == 3
    assert again == granted(Resources(pids=10), frozenset(), len(cores) + 3.0)
    assert again.cpus is None  # cgroups off: no default quota, whatever the cores


def test_kept_limits_follow_the_hosts_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = limits.GrantedLimits()
    cores = len(os.sched_getaffinity(0))
    assert kept.get(Resources(), frozenset({"cpu"})).cpus == cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores + 3)))
    assert kept.get(Resources(), frozenset({"cpu"})).cpus == cores + 3
    assert kept.get(Resources(), frozenset()).cpus is None  # no controller to enforce it
