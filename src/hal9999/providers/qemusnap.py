"""Snapshot and fork for the ``qemu`` provider.

A snapshot stops the sandbox's commands, unmounts its shares (QEMU refuses to save a VM
with 9p mounted), flushes the guest, saves the VM state and ends the VM. The sandbox's
overlay *is* the new image's disk (a layer over the image it came from), with the saved
state next to it; the sandbox then goes on restored from that state. A fork is a sandbox
created from the snapshot image: a fresh overlay on its layer and a restore, no boot.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from typing import TYPE_CHECKING

from hal9999.errors import ExecError
from hal9999.images.store import ImageMeta, now
from hal9999.providers import qemussh, qemuvm
from hal9999.providers.base import fork_all
from hal9999.providers.qemustate import overlay, save_and_quit
from hal9999.providers.qemuvm import RunDir, Shape
from hal9999.spec import SandboxSpec

if TYPE_CHECKING:
    from hal9999.providers.qemu import QemuProvider
    from hal9999.providers.qemusandbox import QemuSandbox

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
        directory = provider.store.dir(sandbox_id)
        # The overlay becomes the snapshot's disk; its backing chain stays as it was.
        os.replace(directory / "disk.qcow2", target / "disk.qcow2")
        (target / "disk.qcow2").chmod(0o444)
        await overlay(target / "disk.qcow2", state_dir / "disk.qcow2")
        (state_dir / "disk.qcow2").chmod(0o444)
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
