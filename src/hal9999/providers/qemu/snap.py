"""Snapshot and fork for the ``qemu`` provider.

A snapshot stops the sandbox's commands, unmounts its shares (QEMU refuses to save a VM
with 9p mounted), flushes the guest, saves the VM state and ends the VM. The sandbox's
overlay *is* the new image's disk (a layer over the image it came from), with the saved
state next to it; the sandbox then goes on restored from that state. A fork is a sandbox
created from the snapshot image: a fresh overlay on its layer and a restore, no boot.

The snapshot's guest memory is moved into a RAM file of its own, as an image's state keeps
it (:mod:`.state`): every fork maps it copy-on-write instead of loading and copying each
page out of ``vm.state``, and forks started at once share its page cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999 import fs
from hal9999.errors import ExecError, ProviderError
from hal9999.providers.base import fork_all
from hal9999.providers.qemu import ssh as qemussh
from hal9999.providers.qemu import vm as qemuvm
from hal9999.providers.qemu.image.store import Image, ImageMeta, now
from hal9999.providers.qemu.state import RAM_FILE, overlay, save_and_quit, sync_private
from hal9999.providers.qemu.vm import Boot, RunDir, Shape
from hal9999.spec import SandboxSpec

if TYPE_CHECKING:
    from hal9999.providers.qemu.provider import QemuProvider
    from hal9999.providers.qemu.sandbox import QemuSandbox

logger = logging.getLogger(__name__)
QUIESCE = "/usr/local/lib/hal/quiesce"


async def snapshot(provider: QemuProvider, sandbox_id: str, name: str | None) -> str:
    """Save ``sandbox_id`` as image ``name`` (generated when None); the image name."""
    record = provider.store.load(sandbox_id)
    vm = provider.vm_record(sandbox_id)
    if record.state != "running" or vm is None or not provider.running(sandbox_id):
        raise ExecError(f"sandbox {sandbox_id} is not running", hint="start it first")
    base = provider.images.get(vm.image)
    name = name or f"{base.name}-snap-{secrets.token_hex(3)}"
    target = provider.images.new_dir(name)
    directory = provider.store.dir(sandbox_id)
    try:
        shape = Shape(**vm.shape)  # type: ignore[arg-type]
        state_dir = target / "states" / shape.key
        state_dir.mkdir(parents=True)
        run = RunDir(sandbox_id)
        # Over ssh, even with the exec agent (connected for it if need be): its session is
        # ended below and waited for, as before, so the saved state holds no session of
        # either channel that was just ending (the agent's last one is long over by then).
        log = provider.store.dir(sandbox_id) / "qemu.log"
        await qemussh.ensure_master(run, log=log, time_limit=60)
        await qemussh.run_root(run, [QUIESCE], time_limit=60)
        # Save no live ssh session: end ours and wait until the guest serves a fresh sshd
        # (its init prints HAL-READY again), so a VM restored from the state answers at once.
        console = provider.store.dir(sandbox_id) / "console.log"
        served = console.read_bytes().count(qemuvm.READY.encode())
        await qemussh.stop_master(run)
        await qemuvm.wait_console_count(
            console, qemuvm.READY, served + 1, pid=vm.pid or 0, vm_id=sandbox_id,
            deadline=time.monotonic() + 30,
        )  # fmt: skip
        await save_and_quit(sandbox_id, state_dir / "vm.state")
        await qemuvm.kill(vm.pid, sandbox_id)
        # The overlay becomes the snapshot's disk; its backing chain stays as it was.
        fs.replace(directory / "disk.qcow2", target / "disk.qcow2")
        (target / "disk.qcow2").chmod(0o444)
        await overlay(target / "disk.qcow2", state_dir / "disk.qcow2")
        (state_dir / "disk.qcow2").chmod(0o444)
        await ram_apart(base, shape, state_dir, directory / "ram-apart")
        for part in ("vmlinuz", "initrd.img", "id_ed25519", "id_ed25519.pub", "known_hosts"):
            if (base.dir / part).exists():
                shutil.copy2(base.dir / part, target / part)
        meta = ImageMeta(
            name=name, kind="snapshot", created_at=now(), parent=base.name,
            suite=base.meta.suite, kernel=base.meta.kernel, packages=base.meta.packages,
            exec_ports=base.meta.exec_ports, agent_pings=base.meta.agent_pings,
            setup_adopts=base.meta.setup_adopts,
        )  # fmt: skip
        provider.images.save_meta(target, meta)
    except BaseException:
        # The sandbox's disk goes back if it was moved in already: it holds the sandbox's
        # files (its VM is gone; a start boots it again).
        moved = target / "disk.qcow2"
        if moved.exists() and not (directory / "disk.qcow2").exists():
            moved.chmod(0o600)
            fs.replace(moved, directory / "disk.qcow2")
        await asyncio.to_thread(shutil.rmtree, target, True)
        raise
    # The sandbox goes on from its own snapshot: a new overlay and a restore.
    image = provider.images.get(name)
    await overlay(state_dir / "disk.qcow2", directory / "disk.qcow2")
    await provider.boot(record, image, shape, directory / "disk.qcow2", state_dir / "vm.state")
    return name


async def fork(
    provider: QemuProvider, image: str, count: int, spec: SandboxSpec
) -> list[QemuSandbox]:
    """``count`` sandboxes of ``spec`` started from snapshot ``image``, concurrently."""
    if count >= 1:
        provider.images.get(image)  # a missing image is named before anything starts
    return await fork_all(provider.create, provider.destroy, image, count, spec)


async def ram_apart(image: Image, shape: Shape, state_dir: Path, files: Path) -> None:
    """Move the guest memory of ``state_dir``'s ``vm.state`` (a snapshot's: its VM ran on a
    private mapping or plain memory, so every page is in it) into a RAM file beside it.

    A QEMU that never runs the guest loads the state into memory mapped shared from the new
    file, then saves it again with :data:`.vm.IGNORE_SHARED` (the memory left out). Its
    disk is a throwaway overlay on the snapshot's layer, which it never writes.

    When that fails, the snapshot keeps its memory in ``vm.state`` (forks load it, as they
    did before): the new state replaces it only once the RAM file is whole on disk."""
    ram, moved = state_dir / RAM_FILE, state_dir / "vm.state.apart"
    files.mkdir(exist_ok=True)
    try:
        await overlay(state_dir / "disk.qcow2", files / "disk.qcow2")
        vm_id = "m" + secrets.token_hex(6)
        run = RunDir(vm_id)
        run.path.mkdir(mode=0o700, parents=True)
        opened = os.open(state_dir / "vm.state", os.O_RDONLY | os.O_CLOEXEC)
        fd = fcntl.fcntl(opened, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(opened)
        try:
            empty = files / "empty"
            empty.mkdir(exist_ok=True)
            args = qemuvm.argv(
                qemu=qemuvm.qemu_binary(), vm_id=vm_id, boot=Boot(image.kernel, image.initrd),
                shape=shape, disk=files / "disk.qcow2", shares=[], empty=empty, run=run,
                console=files / "console.log", pidfile=files / "qemu.pid", incoming=fd,
                exec_ports=image.meta.exec_ports, ram=ram, write_ram=True,
            )  # fmt: skip
            pid = await qemuvm.spawn(args, files / "qemu.log", pass_fds=[fd])
        finally:
            os.close(fd)
        try:
            qmp = await qemuvm.Qmp.connect(run.qmp, deadline=time.monotonic() + 30)
            try:
                await qmp.call("migrate-incoming", uri=f"fd:{fd}")
                await _loaded_paused(qmp, vm_id, deadline=time.monotonic() + 60)
                await qemuvm.save(qmp, moved, vm_id=vm_id, ram_file=True)
                with contextlib.suppress(ProviderError, OSError):
                    await qmp.call("quit")
            finally:
                await qmp.close()
        finally:
            await qemuvm.kill(pid, vm_id)
            shutil.rmtree(run.path, ignore_errors=True)
        await asyncio.to_thread(sync_private, ram)
        fs.replace(moved, state_dir / "vm.state")
    except (ProviderError, OSError) as exc:
        name = state_dir.parent.parent.name
        logger.warning("snapshot %s: its memory stays in vm.state: %s", name, exc)
        for left in (ram, moved):
            left.unlink(missing_ok=True)
    finally:
        await asyncio.to_thread(shutil.rmtree, files, True)


async def _loaded_paused(qmp: qemuvm.Qmp, vm_id: str, *, deadline: float) -> None:
    """Wait until the state's load is done; the guest stays paused, as it was saved."""
    while True:
        status = (await qmp.call("query-status"))["status"]
        if status == "paused":
            return
        if status != "inmigrate":
            raise ProviderError(f"VM {vm_id}: moving the snapshot's memory out failed: {status}")
        if time.monotonic() > deadline:
            raise ProviderError(f"VM {vm_id}: moving the snapshot's memory out took too long")
        await asyncio.sleep(0.01)
