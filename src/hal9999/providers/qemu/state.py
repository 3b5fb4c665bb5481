"""Starting QEMU VMs (cold boot or restore), saved VM states, and the accelerator probe.

A saved VM state is taken once per image and VM *shape* (accelerator, vCPUs, memory,
network): a VM boots over a fresh overlay of the image, and when the guest says its exec
channel waits (``HAL-READY``) its state is saved next to that overlay, which becomes a
read-only layer. Restoring that state over a new overlay of the same layer continues the
very same guest, so a sandbox starts in about half a second instead of booting. The guest's
memory is saved as a file of its own (``ram``, the VM booted with its memory mapped shared
from it), which every restore maps copy-on-write: nothing writes it after the save, no
restore reads and copies every page into fresh memory, and VMs restored at once share its
page cache (states saved before hold the memory in ``vm.state`` and restore as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hal9999 import fs
from hal9999.errors import ConfigError, ProviderError
from hal9999.providers.qemu import vm as qemuvm
from hal9999.providers.qemu.image.store import Image, ImageStore
from hal9999.providers.qemu.vm import Boot, RunDir, Shape, Share

DEFAULT_CPUS = 1
DEFAULT_MEMORY_MB = 1024
BOOT_TIMEOUT = 180.0
"""Cold boot deadline (TCG on a busy 2-core machine can take 30 s)."""
RESTORE_TIMEOUT = 60.0
RAM_FILE = "ram"
"""A saved state's guest memory (states saved before it hold their memory in vm.state)."""


def state_ram(state: Path) -> Path | None:
    """The RAM file of the saved state ``state`` (a ``vm.state``), None when it has none."""
    ram = state.with_name(RAM_FILE)
    return ram if ram.is_file() else None


def sync_private(path: Path) -> None:
    """Flush ``path`` to disk (QEMU wrote it through a shared mapping and never syncs) and
    make it private, as ``vm.state`` is (the guest's memory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class VmPlan:
    """Everything needed to start one VM."""

    vm_id: str
    image: Image
    shape: Shape
    disk: Path
    files: Path
    """Host directory for its console log, QEMU log and pid file."""
    shares: list[Share | None] = field(default_factory=list)
    incoming: Path | None = None
    """A saved VM state to restore instead of booting."""
    ram: Path | None = None
    """A file the guest's memory is mapped from (:func:`.vm.argv`): written while a state
    is made, mapped copy-on-write by every VM restored from it."""
    state_fd: int | None = field(default=None, init=False)
    """The descriptor QEMU holds ``incoming`` open at, for a state with a RAM file (its load
    is started over QMP)."""

    @property
    def console(self) -> Path:
        """The guest's serial console."""
        return self.files / "console.log"

    @property
    def log(self) -> Path:
        """QEMU's own output."""
        return self.files / "qemu.log"


async def qemu_img(*args: str) -> None:
    """Run qemu-img; ProviderError with its message on failure."""
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise ProviderError(f"qemu-img {args[0]} failed: {out.decode(errors='replace').strip()}")


async def overlay(backing: Path, target: Path) -> None:
    """A copy-on-write qcow2 over ``backing`` (never a copy of it)."""
    await qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(target))


async def start_vm(plan: VmPlan, *, time_limit: float | None = None) -> int:
    """Start the VM and wait until its exec channel waits for us; its QEMU pid.

    A VM that is not ready by the deadline is killed, and the error carries the last lines
    of its console.
    """
    deadline = time.monotonic() + (time_limit or default_limit(plan))
    pid = await spawn_vm(plan, deadline=deadline)
    await wait_vm(plan, pid, deadline=deadline)
    return pid


def default_limit(plan: VmPlan) -> float:
    """Seconds a VM of ``plan`` gets to be ready (a restore is much faster than a boot)."""
    return RESTORE_TIMEOUT if plan.incoming else BOOT_TIMEOUT


async def spawn_vm(plan: VmPlan, *, deadline: float) -> int:
    """Start QEMU and wait until its sockets (monitor, exec channel) exist; its pid. The
    guest may still be booting or its state loading: see :func:`wait_vm`."""
    qemu = qemuvm.qemu_binary()
    run = RunDir(plan.vm_id)
    shutil.rmtree(run.path, ignore_errors=True)
    run.path.mkdir(mode=0o700, parents=True)
    empty = plan.files / "empty"
    empty.mkdir(exist_ok=True)
    plan.console.write_bytes(b"")
    state = -1
    if plan.incoming is not None:
        # QEMU reads the saved state from a descriptor it inherits (numbered 10 or above).
        try:
            opened = os.open(plan.incoming, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            why = f"cannot read the saved VM state {plan.incoming}: {exc.strerror}"
            raise ProviderError(why) from None
        state = fcntl.fcntl(opened, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(opened)
    try:
        args = qemuvm.argv(
            qemu=qemu, vm_id=plan.vm_id, boot=Boot(plan.image.kernel, plan.image.initrd),
            shape=plan.shape, disk=plan.disk, shares=plan.shares, empty=empty, run=run,
            console=plan.console, pidfile=plan.files / "qemu.pid",
            incoming=state if state >= 0 else None, exec_ports=plan.image.meta.exec_ports,
            ram=plan.ram,
        )  # fmt: skip
        plan.state_fd = state if state >= 0 else None
        pid = await qemuvm.spawn(args, plan.log, pass_fds=[state] if state >= 0 else [])
    finally:
        if state >= 0:
            os.close(state)
    try:
        last = run.agent(plan.image.meta.exec_ports - 1) if plan.image.meta.exec_ports else None
        while not (run.qmp.exists() and run.channel.exists() and (not last or last.exists())):
            if not qemuvm.alive(pid, plan.vm_id):
                raise ProviderError(f"QEMU exited at start: {qemuvm.tail(plan.log)}")
            if time.monotonic() > deadline:
                raise ProviderError(f"QEMU did not start: {qemuvm.tail(plan.log)}")
            await asyncio.sleep(0.005)
    except BaseException:
        await qemuvm.kill(pid, plan.vm_id)
        raise
    return pid


async def wait_vm(plan: VmPlan, pid: int, *, deadline: float) -> None:
    """Wait until the VM of :func:`spawn_vm` runs: its saved state loaded, or booted until
    its exec channel waits. Kills the VM when that fails or the deadline passes."""
    run = RunDir(plan.vm_id)
    try:
        qmp = await qemuvm.Qmp.connect(run.qmp, deadline=deadline)
        try:
            if plan.incoming is not None:
                if plan.ram is not None:
                    assert plan.state_fd is not None
                    await qemuvm.load_state(qmp, plan.state_fd)
                await qemuvm.wait_restored(qmp, vm_id=plan.vm_id, deadline=deadline)
            else:
                await qemuvm.wait_console(
                    plan.console, qemuvm.READY, pid=pid, vm_id=plan.vm_id, deadline=deadline
                )
        finally:
            await qmp.close()
    except BaseException:
        await qemuvm.kill(pid, plan.vm_id)
        raise


async def save_and_quit(vm_id: str, state: Path, *, ram_file: bool = False) -> None:
    """Save the running VM's state to ``state``, then end the VM (``ram_file``: as
    :func:`.vm.save`)."""
    run = RunDir(vm_id)
    qmp = await qemuvm.Qmp.connect(run.qmp, deadline=time.monotonic() + 10)
    try:
        await qmp.call("stop")
        await qemuvm.save(qmp, state, vm_id=vm_id, ram_file=ram_file)
        with contextlib.suppress(ProviderError, OSError):
            await qmp.call("quit")
    finally:
        await qmp.close()


async def ensure_state(image: Image, shape: Shape) -> float:
    """A saved VM state of ``image`` for ``shape``, made now if missing (under a lock, so
    concurrent sandboxes make it once). The seconds the boot took (0 when it existed)."""
    final = image.state_dir(shape.key)
    if (final / "vm.state").is_file():
        return 0.0
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(final.parent / f".{shape.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if (final / "vm.state").is_file():
            return 0.0
        work = final.with_name(f".{shape.key}.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        await overlay(image.disk, work / "disk.qcow2")
        # The guest's memory in a file of its own, left out of vm.state: a restore maps it
        # copy-on-write instead of reading and copying every page into fresh memory, and
        # VMs restored at once share its page cache.
        plan = VmPlan("s" + secrets.token_hex(6), image, shape, work / "disk.qcow2", work,
                      ram=work / RAM_FILE)  # fmt: skip
        started = time.monotonic()
        pid = await start_vm(plan)
        seconds = time.monotonic() - started
        try:
            await save_and_quit(plan.vm_id, work / "vm.state", ram_file=True)
        finally:
            await qemuvm.kill(pid, plan.vm_id)
            shutil.rmtree(RunDir(plan.vm_id).path, ignore_errors=True)
        await asyncio.to_thread(sync_private, work / RAM_FILE)
        (work / "disk.qcow2").chmod(0o444)  # a layer now: nothing may write to it
        (work / "boot.json").write_text(json.dumps({"boot_s": round(seconds, 2)}))
        fs.replace(work, final)
        return seconds
    finally:
        os.close(lock)


# -- the accelerator ----------------------------------------------------------------------


async def probe_kvm(image: Image, files: Path) -> tuple[bool, str]:
    """Boot the image's kernel under KVM to its initramfs; whether that worked, and why not."""
    files.mkdir(parents=True, exist_ok=True)
    console = files / "probe-console.log"
    console.write_bytes(b"")
    args = [
        qemuvm.qemu_binary(), "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "256",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"console=ttyS0 quiet panic=-1 hal.probe tsc_early_khz={qemuvm.tsc_khz()}",
        "-chardev", f"file,id=con,path={qemuvm.opt(console)}", "-serial", "chardev:con",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, "a KVM guest hung while booting"
    if b"HAL-PROBE-OK" in console.read_bytes():
        return True, "a KVM guest booted"
    lines = out.decode(errors="replace").strip().splitlines() or ["no output"]
    return False, f"a KVM guest failed: {lines[-1][:160]}"


def forced_accel(environ: Mapping[str, str]) -> Literal["kvm", "tcg"] | None:
    """The accelerator ``HAL_QEMU_ACCEL`` forces (None when unset); another value is a
    ConfigError (``HAL_QEMU_ACCEL=KVM `` used to be probed as if unset)."""
    value = environ.get("HAL_QEMU_ACCEL", "")
    if not value:
        return None
    if value.lower() == "kvm":
        return "kvm"
    if value.lower() == "tcg":
        return "tcg"
    raise ConfigError(
        f"HAL_QEMU_ACCEL: expected kvm or tcg, got {value!r}",
        hint="fix HAL_QEMU_ACCEL, or unset it to probe KVM",
    )


async def accel(store: ImageStore, image: Image) -> tuple[Literal["kvm", "tcg"], str]:
    """KVM when a guest really boots with it (probed once, remembered), else TCG.

    ``HAL_QEMU_ACCEL=kvm|tcg`` overrides the probe.
    """
    forced = forced_accel(os.environ)
    if forced is not None:
        return forced, "set by HAL_QEMU_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    memo = store.cache / "accel.json"
    key = f"{os.uname().release}|{image.meta.kernel}|{qemuvm.qemu_binary()}"
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(memo.read_text())
        if known.get("key") == key:
            return ("kvm" if known["kvm"] else "tcg"), str(known["why"])
    ok, why = await probe_kvm(image, store.cache)
    store.cache.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"key": key, "kvm": ok, "why": why}))
    return ("kvm" if ok else "tcg"), why


async def default_shape(store: ImageStore, image: Image) -> Shape:
    """The shape sandboxes get when their spec asks for nothing in particular."""
    chosen, _ = await accel(store, image)
    return Shape(chosen, DEFAULT_CPUS, DEFAULT_MEMORY_MB, "none")
