"""Cgroup detection, limits and kills: on fake hierarchies for v2 files, for real where allowed."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Literal

import pytest

from hal9999.errors import CapabilityError
from hal9999.providers.bwrap.provider import BwrapConfig, BwrapProvider
from hal9999.providers.host import cgroups
from hal9999.providers.host import exec as hostexec
from hal9999.spec import Resources, SandboxSpec


def mountinfo(v2: Path, v1: dict[str, Path]) -> str:
    """A /proc/self/mountinfo with one cgroup2 mount and the given v1 hierarchies."""

    def escaped(path: Path) -> str:
        return str(path).replace(" ", "\\040")

    lines = ["31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755"]
    lines.append(f"41 31 0:38 / {escaped(v2)} rw,relatime - cgroup2 cgroup2 rw")
    for n, (controller, path) in enumerate(v1.items()):
        lines.append(f"{50 + n} 31 0:{40 + n} / {path} rw - cgroup cgroup rw,{controller}")
    return "\n".join(lines) + "\n"


def hierarchy(tmp_path: Path, v2_controllers: str) -> tuple[Path, dict[str, Path]]:
    v2 = tmp_path / "uni fied"  # a space, escaped as \040 in mountinfo
    tmp_path.mkdir()
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text(v2_controllers + "\n")
    v1 = {c: tmp_path / c for c in ("memory", "pids", "cpu")}
    for path in v1.values():
        path.mkdir()
    return v2, v1


def test_a_v1_launcher_joins_through_tasks_not_cgroup_procs(tmp_path: Path) -> None:
    # cgroup.procs moves take a global lock that waits for an RCU grace period after an
    # idle spell; a single thread's own move through tasks does not.
    dirs = [tmp_path / c for c in ("memory", "pids")]
    cgroup = cgroups.CgroupV1(dirs)
    assert cgroup.join_files() == [str(d / "tasks") for d in dirs]
    assert cgroup.procs_files() == [str(d / "cgroup.procs") for d in dirs]


def test_a_v1_cgroup_the_host_makes_writes_its_limits_without_looking_for_controllers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each reset writes the limits again: which hierarchy holds each controller is the
    # host's mount table's answer, not a probe of each directory's files.
    _, v1 = hierarchy(tmp_path / "h", "")
    host = cgroups.CgroupHost(1, v1, frozenset(v1))
    probed: list[str] = []
    real = Path.exists

    def exists(path: Path) -> bool:
        probed.append(path.name)
        return real(path)

    monkeypatch.setattr(Path, "exists", exists)
    limits = cgroups.CgroupLimits(memory_bytes=64 << 20, pids=10, cpu_quota_us=50_000)
    host.create("abc", limits)
    assert probed == ["memory.memsw.limit_in_bytes"]  # swap accounting may be off
    made = {c: path / cgroups.PARENT / "abc" for c, path in v1.items()}
    assert (made["memory"] / "memory.limit_in_bytes").read_text() == f"{64 << 20}\n"
    assert (made["pids"] / "pids.max").read_text() == "10\n"
    assert (made["cpu"] / "cpu.cfs_quota_us").read_text() == "50000\n"


def test_limits_from_resources() -> None:
    limits = cgroups.CgroupLimits.from_resources(Resources(cpus=1.5, memory_mb=64, pids=10))
    assert (limits.memory_bytes, limits.pids, limits.cpu_quota_us) == (64 << 20, 10, 150_000)
    assert limits.controllers() == {"memory", "pids", "cpu"}
    assert cgroups.CgroupLimits.from_resources(Resources()).controllers() == set()


def test_detect_prefers_the_hierarchy_with_memory_and_pids(tmp_path: Path) -> None:
    v2, v1 = hierarchy(tmp_path / "a", "cpu io memory pids")
    host = cgroups.detect(mountinfo(v2, v1))
    assert host is not None and (host.version, host.roots) == (2, {"unified": v2})
    assert host.controllers == {"cpu", "memory", "pids"}

    v2, v1 = hierarchy(tmp_path / "b", "hugetlb")
    host = cgroups.detect(mountinfo(v2, v1))
    assert host is not None and (host.version, host.roots) == (1, v1)

    # Only a controller-less v2: still good for tracking processes, not for limits.
    host = cgroups.detect(mountinfo(v2, {}))
    assert host is not None and (host.version, host.controllers) == (2, frozenset())
    with pytest.raises(CapabilityError, match="memory"):
        host.create("x", cgroups.CgroupLimits(memory_bytes=1 << 20))

    assert cgroups.detect("") is None


def test_v2_limits_and_delegation_files(tmp_path: Path) -> None:
    base = tmp_path / "v2"
    leaf = base / cgroups.PARENT / "abc"
    leaf.mkdir(parents=True)
    (leaf / "memory.swap.max").write_text("max\n")
    host = cgroups.CgroupHost(2, {"unified": base}, frozenset({"memory", "pids", "cpu"}))
    limits = cgroups.CgroupLimits.from_resources(Resources(cpus=0.5, memory_mb=64, pids=32))
    cgroup = host.create("abc", limits)
    assert cgroup.join_files() == cgroup.procs_files() == [str(leaf / "cgroup.procs")]
    assert {f: (leaf / f).read_text() for f in ("memory.max", "memory.swap.max", "pids.max")} == {
        "memory.max": f"{64 << 20}\n",
        "memory.swap.max": "0\n",
        "pids.max": "32\n",
    }
    assert (leaf / "cpu.max").read_text() == "50000 100000\n"
    for level in (base, base / cgroups.PARENT):
        assert (level / "cgroup.subtree_control").read_text() == "+cpu +memory +pids\n"
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
    assert cgroup.oom_kills() == 2
    assert cgroups.Cgroup.from_record(cgroup.to_record()).dirs == [leaf]


@pytest.mark.bwrap
async def test_no_cgroup_means_no_limits(hal_home: Path) -> None:
    provider = BwrapProvider(state_dir=hal_home, config=BwrapConfig(cgroup="off"))
    with pytest.raises(CapabilityError, match="cgroup") as info:
        await provider.create(SandboxSpec(resources=Resources(memory_mb=64)))
    assert info.value.hint is not None and "drop the resource limits" in info.value.hint
    assert await provider.list() == []


async def _join_and_kill(cgroup: cgroups.Cgroup, helper: Literal["auto"] | None) -> None:
    """Start a forking shell inside ``cgroup`` through the launcher, then kill it all."""
    argv = hostexec.launcher_argv(
        "0" * 12, cgroup.join_files(), ["sh", "-c", "sleep 30 & exec sleep 30"], helper=helper
    )
    proc = await asyncio.create_subprocess_exec(*argv, start_new_session=True)
    for _ in range(100):
        if len(cgroup.pids()) == 2:
            break
        await asyncio.sleep(0.02)
    assert proc.pid in cgroup.pids() and len(cgroup.pids()) == 2
    # Whole processes, in every hierarchy (a v1 launcher joins by its thread's tasks entry).
    for path in cgroup.dirs:
        assert len((path / "cgroup.procs").read_text().split()) == 2, path
    await cgroup.kill_all()
    assert await proc.wait() == -9
    assert cgroup.pids() == set()
    await cgroup.remove()
    assert not any(path.exists() for path in cgroup.dirs)
    await cgroup.remove()  # idempotent


@pytest.mark.cgroup
@pytest.mark.parametrize("helper", ["auto", None], ids=["static", "sh"])
async def test_real_cgroup_limits_join_kill_remove(helper: Literal["auto"] | None) -> None:
    host = cgroups.detect()
    assert host is not None
    name = f"test-{os.getpid()}"
    limits = cgroups.CgroupLimits.from_resources(Resources(cpus=0.25, memory_mb=96, pids=20))
    cgroup = host.create(name, limits)
    try:
        if cgroup.version == 1:
            values = {
                p.name: p.read_text().strip()
                for d in cgroup.dirs
                for p in d.glob("*")
                if p.name in ("memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us")
            }
            assert values == {
                "memory.limit_in_bytes": str(96 << 20),
                "pids.max": "20",
                "cpu.cfs_quota_us": "25000",
            }
        else:
            assert (cgroup.dirs[0] / "pids.max").read_text().strip() == "20"
        assert cgroup.oom_kills() == 0
        await _join_and_kill(cgroup, helper)
    finally:
        await cgroup.remove()


def writable_v2() -> cgroups.CgroupHost:
    """A cgroup v2 hierarchy this process may write, with no controllers asked for (the
    test is skipped where there is none)."""
    info = Path("/proc/self/mountinfo").read_text()
    mounts = [line.split()[4] for line in info.splitlines() if " - cgroup2 " in line]
    usable = [Path(m) for m in mounts if os.access(m, os.W_OK)]
    if not usable:
        pytest.skip("no writable cgroup v2 hierarchy here")
    return cgroups.CgroupHost(2, {"unified": usable[0]}, frozenset())


async def test_real_v2_tracking_with_cgroup_kill() -> None:
    # Kill and removal through cgroup.kill, which every v2 hierarchy has controllers or not.
    host = writable_v2()
    cgroup = host.create(f"test-v2-{os.getpid()}", cgroups.CgroupLimits())
    try:
        await _join_and_kill(cgroup, "auto")
    finally:
        await cgroup.remove()


def test_v2_a_reused_cgroup_gets_unset_limits_back_to_unlimited(tmp_path: Path) -> None:
    base = tmp_path / "v2"
    leaf = base / cgroups.PARENT / "abc"
    leaf.mkdir(parents=True)
    host = cgroups.CgroupHost(2, {"unified": base}, frozenset({"memory", "pids", "cpu"}))
    host.create("abc", cgroups.CgroupLimits.from_resources(Resources(cpus=0.5, memory_mb=64)))
    (leaf / "pids.max").write_text("3\n")  # left over from an earlier setting
    host.create("abc", cgroups.CgroupLimits.from_resources(Resources(pids=40)))
    values = {f: (leaf / f).read_text() for f in ("memory.max", "pids.max", "cpu.max")}
    assert values == {"memory.max": "max\n", "pids.max": "40\n", "cpu.max": "max\n"}


@pytest.mark.cgroup
async def test_real_cgroup_reapplied_limits_replace_the_old_ones() -> None:
    host = cgroups.detect()
    assert host is not None
    name = f"test-reapply-{os.getpid()}"
    cgroup = host.create(name, cgroups.CgroupLimits.from_resources(Resources(pids=20, cpus=0.5)))
    try:
        host.create(name, cgroups.CgroupLimits.from_resources(Resources(memory_mb=96)))
        files = {p.name: p for d in cgroup.dirs for p in d.glob("*")}
        if cgroup.version == 1:
            assert files["pids.max"].read_text().strip() == "max"
            assert files["cpu.cfs_quota_us"].read_text().strip() == "-1"
            assert files["memory.limit_in_bytes"].read_text().strip() == str(96 << 20)
        else:
            assert files["pids.max"].read_text().strip() == "max"
            assert files["cpu.max"].read_text().split()[0] == "max"
    finally:
        await cgroup.remove()


def _remove(cgroup: cgroups.Cgroup) -> None:
    """Remove ``cgroup``'s (empty) directories, as a second ``hal`` process destroying the
    same sandbox does at any moment."""
    for path in cgroup.dirs:
        if path.exists():
            path.rmdir()


@pytest.mark.cgroup
async def test_a_cgroup_removed_during_the_read_of_its_processes_holds_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `hal task stop` and the task's runner both destroy the sandbox when it stops; the
    # kernel answers ENODEV to a read of a cgroup file opened before the rmdir (seen in CI
    # as an internal error of `hal task stop`).
    host = cgroups.detect()
    assert host is not None
    name = f"test-gone-{os.getpid()}"
    cgroup = host.create(name, cgroups.CgroupLimits())
    try:
        fd = os.open(cgroup.procs_files()[0], os.O_RDONLY)
        _remove(cgroup)
        with pytest.raises(OSError) as raised:
            os.read(fd, 4096)
        os.close(fd)
        assert raised.value.errno == errno.ENODEV  # what the kernel does, checked here

        cgroup = host.create(name, cgroups.CgroupLimits())

        def racing_read(path: str) -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                _remove(cgroup)
                return os.read(fd, 4096)
            finally:
                os.close(fd)

        monkeypatch.setattr(cgroups, "read_all", racing_read)
        assert cgroup.pids() == set()
        assert not cgroup.exists()
        await cgroup.remove()  # and the rest of a destroy goes on
    finally:
        _remove(cgroup)


async def test_a_v2_cgroup_removed_before_its_kill_is_written_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = writable_v2()
    cgroup = host.create(f"test-v2-gone-{os.getpid()}", cgroups.CgroupLimits())
    met: list[int] = []

    def racing_write(path: Path, value: object) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            _remove(cgroup)
            os.write(fd, f"{value}\n".encode())
        except OSError as exc:
            met.append(exc.errno or 0)
            raise
        finally:
            os.close(fd)

    monkeypatch.setattr(cgroups, "_write", racing_write)
    try:
        await cgroup.kill_all()
        await cgroup.remove()
    finally:
        _remove(cgroup)
    assert met == [errno.ENODEV]  # the kernel's answer, met and taken as "gone"
