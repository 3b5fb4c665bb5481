"""The saved state's memory file: every VM restored from a state maps the guest's
memory from the state's ``ram`` file copy-on-write instead of reading and copying it out of
``vm.state``, so what one guest writes to its memory reaches neither the file nor another
guest restored from it. A snapshot's state gets a RAM file of its own, which its forks map
the same way."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.providers.qemu_helpers import (
    provider_fixture,  # noqa: F401  (the fixture provider)
    remove_all,
    sh,
)

from hal9999.errors import ProviderError
from hal9999.providers.qemu import snap as qemusnap
from hal9999.providers.qemu.provider import QemuProvider
from hal9999.providers.qemu.sandbox import QemuSandbox
from hal9999.spec import SandboxSpec

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300)]


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _private_maps(provider: QemuProvider, sandbox: QemuSandbox, ram: Path) -> list[str]:
    vm = provider.vm_record(sandbox.id)
    assert vm is not None and vm.started == "restore"
    lines = Path(f"/proc/{vm.pid}/maps").read_text().splitlines()
    mapped = [line.split()[1] for line in lines if line.endswith(f" {ram}")]
    assert mapped, "the guest's memory is not mapped from the state's RAM file"
    return mapped


def _specs(tmp_path: Path) -> Callable[[int], SandboxSpec]:
    """Specs of sandboxes, the n-th with a workspace of its own."""

    def spec(n: int) -> SandboxSpec:
        workspace = tmp_path / f"ws{n}"
        workspace.mkdir()
        return SandboxSpec(provider="qemu", workspace=workspace)

    return spec


async def _state_ram(provider: QemuProvider, image_name: str, spec: SandboxSpec) -> Path:
    """The RAM file of ``image_name``'s saved state for ``spec``'s shape: private, and the
    memory left out of its ``vm.state``."""
    image = provider.images.get(image_name)
    state = image.state_dir((await provider.shape(spec, image)).key)
    ram = state / "ram"
    assert ram.is_file() and ram.stat().st_mode & 0o077 == 0, "a private RAM file"
    assert (state / "vm.state").stat().st_size < 16 << 20, "the memory is not in vm.state"
    return ram


async def test_restored_guests_map_the_saved_memory_privately_and_never_write_it(
    provider: QemuProvider, tmp_path: Path
) -> None:
    spec = _specs(tmp_path)
    first = await provider.create(spec(1))  # makes the state when it is missing
    sandboxes = [first]
    try:
        ram = await _state_ram(provider, "default", spec(0))
        before = _digest(ram)
        second = await provider.create(spec(2))
        sandboxes.append(second)
        for sandbox in sandboxes:
            assert set(_private_maps(provider, sandbox, ram)) == {"rw-p"}, "copy-on-write"
        # Many pages written in one guest's memory (a tmpfs), one of them marked.
        fill = "head -c 32M /dev/zero | tr '\\0' a > /dev/shm/fill && echo first-only"
        out = await first.exec(sh(f"{fill} > /dev/shm/mark && cat /dev/shm/mark"))
        assert out.text() == "first-only\n"
        out = await second.exec(sh("ls /dev/shm; cat /dev/shm/mark 2>/dev/null; echo end"))
        assert out.text() == "end\n", "a guest saw another guest's memory"
        for sandbox in sandboxes:
            await provider.destroy(sandbox.id)
        sandboxes.clear()
        assert _digest(ram) == before, "a restored guest wrote the saved state's memory"
        third = await provider.create(spec(3))
        sandboxes.append(third)
        out = await third.exec(sh("ls /dev/shm; echo end"))
        assert out.text() == "end\n"
    finally:
        await remove_all(provider, sandboxes)


async def test_forks_map_their_snapshots_memory_privately_and_see_no_other_forks_writes(
    provider: QemuProvider, tmp_path: Path
) -> None:
    """A snapshot's memory is moved out of its ``vm.state`` into a RAM file
    of its own (it was in ``vm.state``, and every fork loaded and copied each page). Each fork
    and the snapshotted sandbox, which goes on from the snapshot, map it copy-on-write: what
    one of them writes reaches neither the file nor any other. The guest's page cache is kept
    in it (quiesce drops it no more): a fork reads what its source had read without a disk
    read."""
    spec = _specs(tmp_path)
    source = await provider.create(spec(1))
    name = f"test-ramsnap-{source.id}"
    sandboxes = [source]
    try:
        await source.exec(sh("echo snapshotted > /dev/shm/kept"))  # in the guest's memory
        # And a file on its disk, in its page cache, which the snapshot keeps too.
        await source.exec(sh("head -c 4M /dev/urandom > /var/tmp/blob && sync"))
        await provider.snapshot(source.id, name)
        ram = await _state_ram(provider, name, spec(0))
        before = _digest(ram)
        forks = await provider.fork(name, 2, spec(2))
        sandboxes += forks
        for sandbox in sandboxes:
            assert set(_private_maps(provider, sandbox, ram)) == {"rw-p"}, "copy-on-write"
            out = await sandbox.exec(sh("cat /dev/shm/kept"))
            assert out.text() == "snapshotted\n", "the snapshot's memory came back"
        # Read without a disk read (KiB paged in, /proc/vmstat): the cache came back.
        reads = "awk '/^pgpgin /{print $2}' /proc/vmstat"
        read = f"a=$({reads}); cat /var/tmp/blob > /dev/null; echo $(($({reads}) - a))"
        assert int((await forks[1].exec(sh(read))).text()) < 1024, "the page cache was dropped"
        fill = "head -c 32M /dev/zero | tr '\\0' b > /dev/shm/fill && echo first-fork-only"
        out = await forks[0].exec(sh(f"{fill} > /dev/shm/mark && cat /dev/shm/mark"))
        assert out.text() == "first-fork-only\n"
        for other in (forks[1], source):
            out = await other.exec(sh("ls /dev/shm; cat /dev/shm/mark 2>/dev/null; echo end"))
            assert out.text() == "kept\nend\n", "a guest saw another guest's memory"
        for fork in forks:
            await provider.destroy(fork.id)
            sandboxes.remove(fork)
        assert _digest(ram) == before, "a fork wrote the snapshot's memory"
        [later] = await provider.fork(name, 1, spec(3))
        sandboxes.append(later)
        out = await later.exec(sh("ls /dev/shm; echo end"))
        assert out.text() == "kept\nend\n"
    finally:
        await remove_all(provider, sandboxes, name)


async def test_a_snapshot_whose_memory_cannot_be_moved_out_keeps_it_in_its_state(
    provider: QemuProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving a snapshot's memory into a RAM file is a speed-up: when its QEMU fails, the
    snapshot is still made, with its memory in ``vm.state`` and no RAM file, and forks."""

    async def failed(*args: object, **kwargs: object) -> None:
        raise ProviderError("the state did not load")

    monkeypatch.setattr(qemusnap, "_loaded_paused", failed)
    spec = _specs(tmp_path)
    source = await provider.create(spec(1))
    name = f"test-ramfail-{source.id}"
    sandboxes = [source]
    try:
        await source.exec(sh("echo snapshotted > /dev/shm/kept"))
        await provider.snapshot(source.id, name)
        image = provider.images.get(name)
        state = image.state_dir((await provider.shape(spec(0), image)).key)
        assert sorted(p.name for p in state.iterdir()) == ["disk.qcow2", "vm.state"]
        assert (state / "vm.state").stat().st_size > 16 << 20, "the memory is in vm.state"
        [fork] = await provider.fork(name, 1, spec(2))
        sandboxes.append(fork)
        for sandbox in sandboxes:
            assert (await sandbox.exec(sh("cat /dev/shm/kept"))).text() == "snapshotted\n"
    finally:
        await remove_all(provider, sandboxes, name)
