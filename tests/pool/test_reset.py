"""Returning a sandbox to the pool: a reset that cannot be verified destroys it, and providers
that cannot reset safely (a VM, the host itself) refuse the ``reset`` policy."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.support.pool import dig

from hal9999.errors import ConfigError, ProviderError, ProviderUnavailable
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.pool.settings import policy_of
from hal9999.providers.base import Provider
from hal9999.providers.bwrap.provider import BwrapProvider
from hal9999.providers.fake.provider import FakeProvider
from hal9999.providers.host import cgroups, scratch
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host.records import SandboxRecord
from hal9999.providers.host.sandbox import HostProvider
from hal9999.providers.local import LocalProvider
from hal9999.spec import ArgvCommand, SandboxSpec


def pool_of(tmp_path: Path, provider: Provider, **settings: object) -> WarmPool:
    values = ProviderSettings.model_validate(settings)
    return WarmPool(
        providers=lambda name: provider,
        settings=lambda name: values,
        slots=SlotDir(tmp_path / "slots"),
    )


def spec_for(tmp_path: Path, provider: str, n: int) -> SandboxSpec:
    workspace = tmp_path / f"ws{n}"
    workspace.mkdir(exist_ok=True)
    network = "host" if provider == "local" else "none"
    return SandboxSpec(provider=provider, workspace=workspace, network=network)


async def test_a_reset_that_cannot_finish_destroys_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = FakeProvider(state_dir=tmp_path / "state")
    pool = pool_of(tmp_path, provider)
    first = await pool.claim(spec_for(tmp_path, "fake", 1))
    await first.sandbox.write_file_atomic("/tmp/left", b"task 1")

    def stuck(path: Path) -> None:
        raise ProviderError(f"cannot remove {path}: Operation not permitted")

    monkeypatch.setattr(scratch, "remove_tree", stuck)
    await pool.release(first)
    assert not provider.store.dir(first.sandbox.id).exists(), "destroyed, not kept"
    monkeypatch.undo()
    second = await pool.claim(spec_for(tmp_path, "fake", 2))
    assert not second.warm and second.sandbox.id != first.sandbox.id
    assert not await second.sandbox.exists("/tmp/left")
    await pool.release(second, reuse=False)


async def test_a_reset_leaves_a_fresh_root_and_nothing_retired(tmp_path: Path) -> None:
    provider = FakeProvider(state_dir=tmp_path / "state")
    pool = pool_of(tmp_path, provider)
    first = await pool.claim(spec_for(tmp_path, "fake", 1))
    await first.sandbox.write_file_atomic("/tmp/deep/left", b"task 1")
    await first.sandbox.write_file_atomic("/etc/planted", b"task 1")
    await pool.release(first)
    second = await pool.claim(spec_for(tmp_path, "fake", 2))
    assert second.warm and second.sandbox.id == first.sandbox.id
    for path in ("/tmp/deep", "/etc/planted"):
        assert not await second.sandbox.exists(path)
    names = os.listdir(provider.store.dir(second.sandbox.id))
    assert not [n for n in names if n.startswith(scratch.RETIRED_PREFIX)]
    await pool.release(second, reuse=False)


async def test_local_refuses_the_reset_policy_and_is_destroyed_by_default(
    tmp_path: Path,
) -> None:
    provider = LocalProvider(state_dir=tmp_path / "state")
    assert not provider.resets_safely()
    assert policy_of("local", ProviderSettings()) == "destroy"
    with pytest.raises(ConfigError, match="not safe for provider 'local'") as info:
        await pool_of(tmp_path, provider, policy="reset").claim(spec_for(tmp_path, "local", 1))
    assert info.value.hint is not None and 'policy = "destroy"' in info.value.hint
    pool = pool_of(tmp_path, provider)
    lease = await pool.claim(spec_for(tmp_path, "local", 1))
    await pool.release(lease)
    assert await provider.list() == []


async def test_qemu_refuses_the_reset_policy_and_is_destroyed_by_default(
    hal_home: Path, tmp_path: Path
) -> None:
    from hal9999.providers.qemu.provider import QemuProvider

    if shutil.which("qemu-system-x86_64") is None and os.environ.get("CI") != "true":
        pytest.skip("QEMU is not installed")
    try:
        provider = QemuProvider(state_dir=hal_home / "sandboxes" / "qemu")
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))
    # A reused VM would keep its disk, its kernel and its processes: it is never reset.
    assert not provider.resets_safely()
    assert policy_of("qemu", ProviderSettings()) == "destroy"
    with pytest.raises(ConfigError, match="not safe for provider 'qemu'"):
        await pool_of(tmp_path, provider, policy="reset").claim(spec_for(tmp_path, "qemu", 1))
    assert await provider.list() == []


def test_remove_tree_gets_past_locked_dirs_and_never_follows_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    tree = tmp_path / "tree"
    (tree / "zero" / "deeper").mkdir(parents=True)
    (tree / "zero" / "deeper" / "secret").write_text("x")
    (tree / "ro").mkdir()
    (tree / "ro" / "f").write_text("x")
    (tree / "link").symlink_to(outside)
    (tree / "zero" / "deeper" / "link").symlink_to(outside / "keep")
    os.mkfifo(tree / "fifo")
    os.chmod(tree / "zero" / "deeper", 0)
    os.chmod(tree / "zero", 0)
    os.chmod(tree / "ro", 0o555)
    retired = scratch.retire(tmp_path, "tree")
    assert retired is not None and not tree.exists()
    assert not scratch.holds_no_files(retired)
    scratch.remove_tree(retired)
    assert not retired.exists()
    assert (outside / "keep").read_text() == "host file"
    assert scratch.retire(tmp_path, "tree") is None


def test_a_fresh_dir_holds_only_dirs(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert scratch.holds_no_files(tmp_path / "a")
    (tmp_path / "a" / "b" / "l").symlink_to(tmp_path)
    assert not scratch.holds_no_files(tmp_path / "a")
    assert not scratch.holds_no_files(tmp_path / "missing")


def test_remove_tree_takes_apart_a_tree_deeper_than_any_stack(tmp_path: Path) -> None:
    # Deeper than Python's recursion limit and than a process's descriptors: shutil.rmtree
    # raises RecursionError here, which would have crashed a sandbox's destroy.
    top = tmp_path / "deep"
    fd = dig(top, 1200)
    os.mkfifo("fifo", dir_fd=fd)
    os.chmod(f"/proc/self/fd/{fd}", 0)
    os.close(fd)
    scratch.remove_tree(top)
    assert not top.exists()


@pytest.mark.bwrap
async def test_a_pool_reset_scans_the_host_at_most_once_and_by_another_hal_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = BwrapProvider(state_dir=tmp_path / "state")
    pool = pool_of(tmp_path, provider)
    lease = await pool.claim(spec_for(tmp_path, "bwrap", 1))
    sandbox_id = lease.sandbox.id
    assert (await lease.sandbox.exec(ArgvCommand(argv=("true",)))).ok
    scans: list[str] = []
    real = hostexec._pids_marked

    def scan(var: str, value: str) -> set[int]:
        found = real(var, value)
        if not found:  # a scan that found a process (slow to die) is followed by another
            scans.append(value)
        return found

    monkeypatch.setattr(hostexec, "_pids_marked", scan)
    await pool.release(lease)
    # The pool's stop scans every host process for the marker until none is left, and the
    # reset right after it does not again. A root hal's sandbox made here with its cgroup
    # holds every process of it in that cgroup (HostProvider.cgroup_holds_all): no scan.
    record = provider.store.load(sandbox_id)
    own_uid_and_cgroup = record.uid is not None and record.cgroup is not None
    assert scans == ([] if own_uid_and_cgroup else [sandbox_id])
    # Another hal process (a restarted daemon) did not make the sandbox: a record without
    # a cgroup may have come first, so its stop scans in full, and a marked process outside
    # the cgroup is found and killed. So does a reset after a start by another hal process.
    other = BwrapProvider(state_dir=tmp_path / "state")
    await other.stop(sandbox_id)
    await BwrapProvider(state_dir=tmp_path / "state").start(sandbox_id)
    env = {"PATH": os.environ["PATH"], hostexec.MARKER_VAR: sandbox_id}
    escapee = await asyncio.create_subprocess_exec("sleep", "60", env=env)
    try:
        scans.clear()
        await other.reset(sandbox_id)
        assert scans and await asyncio.wait_for(escapee.wait(), 5) == -9
    finally:
        if escapee.returncode is None:
            escapee.kill()
            await escapee.wait()
    await pool.drain()


async def test_a_stop_whose_record_goes_meanwhile_still_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = FakeProvider(state_dir=tmp_path / "state")
    sandbox = await provider.create(SandboxSpec(provider="fake"))
    record_file = provider.store.path(sandbox.id)

    async def kill_and_lose_the_record(record: object) -> None:
        record_file.unlink()  # a destroy racing the stop

    monkeypatch.setattr(provider, "_kill", kill_and_lose_the_record)
    await provider.stop(sandbox.id)
    monkeypatch.undo()
    await provider.destroy(sandbox.id)


async def test_a_start_during_the_stops_kill_leaves_the_reset_a_full_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reset takes the record the pool's stop saved (not read again) and skips its own
    # stop only while the file is the one that stop wrote: a start by another hal process
    # during the kill saves another, and the reset then stops in full.
    provider = FakeProvider(state_dir=tmp_path / "state")
    sandbox = await provider.create(SandboxSpec(provider="fake"))
    real_kill = provider._kill

    async def kill_then_started_elsewhere(record: SandboxRecord) -> None:
        await real_kill(record)
        await FakeProvider(state_dir=tmp_path / "state").start(sandbox.id)

    monkeypatch.setattr(provider, "_kill", kill_then_started_elsewhere)
    await provider.stop(sandbox.id)
    monkeypatch.undo()
    assert provider._still_stopped(sandbox.id) is None
    await provider.stop(sandbox.id)
    assert provider._still_stopped(sandbox.id) == provider.store.load(sandbox.id)
    await provider.destroy(sandbox.id)


@pytest.mark.bwrap
async def test_a_reset_keeps_an_untouched_tmp_and_swaps_any_other(tmp_path: Path) -> None:
    """A tmp no task changed is kept (no directory made and freed a task); one whose
    entries, mode or times a task changed, even back to empty, is swapped for a fresh one."""
    provider = BwrapProvider(state_dir=tmp_path / "state")
    pool = pool_of(tmp_path, provider)
    lease = await pool.claim(spec_for(tmp_path, "bwrap", 1))
    sandbox_id = lease.sandbox.id
    tmp = provider.store.dir(sandbox_id) / "tmp"
    assert (await lease.sandbox.exec(ArgvCommand(argv=("ls", "/workspace")))).ok
    kept = tmp.stat()
    await pool.release(lease)
    assert tmp.stat().st_ino == kept.st_ino
    changes = [
        ("sh", "-c", "echo x > /tmp/f && rm /tmp/f"),
        ("chmod", "1770", "/tmp"),
        ("touch", "-m", "-d", "2001-01-01", "/tmp"),
    ]
    for n, change in enumerate(changes, start=2):
        lease = await pool.claim(spec_for(tmp_path, "bwrap", n))
        assert lease.sandbox.id == sandbox_id
        assert (await lease.sandbox.exec(ArgvCommand(argv=change))).ok
        before = tmp.stat().st_ino
        await pool.release(lease)
        fresh = tmp.stat()
        assert fresh.st_ino != before, change
        assert fresh.st_mode & 0o7777 == 0o1777 and not os.listdir(tmp)
    names = os.listdir(provider.store.dir(sandbox_id))
    assert not [n for n in names if n.startswith(scratch.RETIRED_PREFIX)]
    await pool.drain()


def test_untouched_needs_the_same_stamp_an_empty_dir_and_no_xattr(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.mkdir()
    fresh = scratch.stamp(path)
    assert scratch.untouched(path, fresh)
    assert not scratch.untouched(path, None)  # no stamp (another process made it): swap
    os.setxattr(path, "user.left", b"x")
    assert not scratch.untouched(path, fresh)
    os.removexattr(path, "user.left")
    assert not scratch.untouched(path, fresh)  # the ctime moved: swap all the same


@pytest.mark.bwrap
async def test_a_prime_takes_the_starts_handle_only_while_nobody_saved_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The prime after a pool reset read and validated the record the reset's start
    # had just saved and built the same handle again. A save since (another hal process)
    # means a fresh read.
    provider = BwrapProvider(state_dir=tmp_path / "state")
    sandbox = await provider.create(spec_for(tmp_path, "bwrap", 1))
    loads: list[str] = []
    real_load = provider.store.load
    monkeypatch.setattr(provider.store, "load", lambda i: loads.append(i) or real_load(i))
    try:
        await provider.stop(sandbox.id)
        await provider.start(sandbox.id)
        loads.clear()
        await provider.prime(sandbox.id)
        assert loads == []
        await provider.stop(sandbox.id)
        await provider.start(sandbox.id)
        other = BwrapProvider(state_dir=tmp_path / "state")
        other.store.save(other.store.load(sandbox.id))
        loads.clear()
        await provider.prime(sandbox.id)
        assert loads == [sandbox.id]
    finally:
        await provider.destroy(sandbox.id)


# What a pool reset reads again. The record its last start saved is taken
# as saved while nobody saved the file since, and a sandbox's cgroup object is built once.


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
