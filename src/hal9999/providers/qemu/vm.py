"""One QEMU microVM: its command line, its QMP socket, boot, restore, save and kill.

A VM is started detached from ``hal`` (a new session, re-parented to init), so it outlives
the process that started it; everything about it is found again from files: the pid file,
the console log and the unix sockets in its run directory. No TCP port is ever opened: the
monitor (QMP) and the exec channel (a virtio-serial port) are unix sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hal9999 import fs, procs
from hal9999.envvars import absolute_dir, kept_env
from hal9999.errors import ProviderError, ProviderUnavailable
from hal9999.unixsock import own_dir

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
INSTALL_HINT = "apt-get install qemu-system-x86 qemu-utils"
SHARES = 8
"""virtio-9p devices every VM has (tags ``hal0``..``hal7``), used or not: a saved VM state
can only be restored into a VM with exactly the same devices."""
READY = "HAL-READY"
"""What the guest init prints on the console once the exec channel is waiting."""
SHARE_TAG = "hal{}"
RAM_ID = "microvm.ram"
"""The id of a microvm's memory backend, the name its RAM block has in a saved state: the one
QEMU gives the memory ``-m`` alone makes, so states saved with and without a RAM file name the
same block (a snapshot of a VM restored from a RAM file restores into plain memory)."""
IGNORE_SHARED = "x-ignore-shared"
"""The migration capability that leaves RAM mapped shared from a file out of a saved state
(the file holds it), and that a state saved with it must be loaded with."""


def qemu_binary() -> str:
    """The QEMU system emulator; :class:`ProviderUnavailable` with the fix when missing."""
    found = shutil.which(QEMU)
    if found is None or shutil.which(QEMU_IMG) is None:
        raise ProviderUnavailable("QEMU is not installed", hint=INSTALL_HINT)
    return found


@functools.cache
def tsc_khz() -> int:
    """The host TSC frequency in kHz: microvm under TCG can hang calibrating without it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


@dataclass(frozen=True)
class Shape:
    """What a saved VM state must match to be restored: accelerator and devices."""

    accel: Literal["kvm", "tcg"]
    cpus: int
    memory_mb: int
    net: Literal["none", "user"]

    @property
    def key(self) -> str:
        """A file-name-safe key, e.g. ``tcg-c1-m1024-none``."""
        return f"{self.accel}-c{self.cpus}-m{self.memory_mb}-{self.net}"


@dataclass(frozen=True)
class Share:
    """A host directory exported to the guest by virtio-9p."""

    path: Path
    read_only: bool


@dataclass(frozen=True)
class Boot:
    """The kernel and initramfs a VM boots."""

    kernel: Path
    initrd: Path


class RunDir:
    """Sockets of one VM, in a short directory (unix socket paths are limited to 107 bytes)."""

    def __init__(self, vm_id: str) -> None:
        self.path = run_root() / vm_id

    @property
    def qmp(self) -> Path:
        """The QMP monitor socket."""
        return self.path / "qmp"

    @property
    def channel(self) -> Path:
        """The virtio-serial port the guest's sshd answers on."""
        return self.path / "ssh"

    @property
    def control(self) -> Path:
        """The ssh ControlMaster socket."""
        return self.path / "ctl"

    def agent(self, index: int) -> Path:
        """The virtio-serial port ``hal.exec.<index>`` the guest's exec agent answers on."""
        return self.path / f"exec{index}"


SHARED_RUN_ROOT = "/tmp/hal9999-qemu-{uid}"
"""The default of :func:`run_root`, in the shared ``/tmp`` (a short path: sockets)."""


def run_root() -> Path:
    """Where every VM's run directory lives (mode 700). The default is in ``/tmp``, where
    whoever made it first could replace a VM's sockets (its monitor, its exec ports), so
    there it must be this user's alone."""
    chosen = absolute_dir(os.environ, "HAL_QEMU_RUN_DIR")
    if chosen:
        root = Path(chosen)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root
    shared = Path(SHARED_RUN_ROOT.format(uid=os.getuid()))
    return own_dir(shared, "VMs' sockets", "HAL_QEMU_RUN_DIR", ProviderError)


def opt(value: object) -> str:
    """``value`` (a path) as one value of a QEMU option list (``key=value,key=value``): each
    comma doubled, as QEMU reads it back. A single comma ended the value there, so a path
    holding one (a ``HAL_HOME`` of ``/srv/a,b``) failed the start ("Invalid parameter"), and
    what followed it was read as more keys of the option (``,readonly=off``)."""
    return str(value).replace(",", ",,")


def argv(
    *,
    qemu: str,
    vm_id: str,
    boot: Boot,
    shape: Shape,
    disk: Path,
    shares: Sequence[Share | None],
    empty: Path,
    run: RunDir,
    console: Path,
    pidfile: Path,
    incoming: int | None = None,
    cmdline: str = "",
    exec_ports: int = 0,
    ram: Path | None = None,
    write_ram: bool = False,
) -> list[str]:
    """The full QEMU command line. Devices are always the same, in the same order.

    ``incoming`` is a file descriptor QEMU inherits, open on a saved VM state to restore.
    ``exec_ports`` virtio-serial ports for the guest's exec agent follow the ssh port (an
    image's saved states have exactly as many as its guest serves: images built before the
    agent have none). ``ram``: a file the guest's memory is mapped from: shared (the guest
    writes it) while a state is made, private (copy-on-write: the file is never written) when
    ``incoming`` restores the state saved with it, whose loading then waits for
    :func:`load_state` (the capability it needs is set over QMP, before the load).
    ``write_ram``: shared even with ``incoming``, whose load (started over QMP) then writes
    the state's memory into the file (a snapshot's state given a RAM file of its own)."""
    accel = "kvm" if shape.accel == "kvm" else "tcg,tb-size=256"
    append = f"console=ttyS0 quiet panic=-1 tsc_early_khz={tsc_khz()} {cmdline}".strip()
    args = [
        qemu, "-name", f"hal-{vm_id}", "-M", "microvm", "-accel", accel, "-cpu", "max",
        "-smp", str(shape.cpus), "-m", str(shape.memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        *(ram_args(ram, shape.memory_mb, shared=incoming is None or write_ram) if ram else ()),
        "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", append,
        "-chardev", f"file,id=con,path={opt(console)}", "-serial", "chardev:con",
        "-drive", f"id=root,file={opt(disk)},format=qcow2,if=none,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=ssh,path={opt(run.channel)},server=on,wait=off",
        "-device", "virtserialport,chardev=ssh,name=hal.ssh",
    ]  # fmt: skip
    for index in range(exec_ports):
        args += [
            "-chardev", f"socket,id=exec{index},path={opt(run.agent(index))},server=on,wait=off",
            "-device", f"virtserialport,chardev=exec{index},name=hal.exec.{index}",
        ]  # fmt: skip
    args += [
        "-device", "virtio-rng-device",
        "-netdev", f"user,id=net0,restrict={'on' if shape.net == 'none' else 'off'}",
        "-device", "virtio-net-device,netdev=net0",
        "-qmp", f"unix:{opt(run.qmp)},server=on,wait=off",
        "-pidfile", str(pidfile),
    ]  # fmt: skip
    for index in range(SHARES):
        share = shares[index] if index < len(shares) else None
        path, ro = (share.path, share.read_only) if share is not None else (empty, True)
        readonly = ",readonly=on" if ro else ""
        args += [
            "-fsdev", f"local,id=fs{index},path={opt(path)},security_model=none{readonly}",
            "-device", f"virtio-9p-device,fsdev=fs{index},mount_tag={SHARE_TAG.format(index)}",
        ]  # fmt: skip
    if incoming is not None:
        # QEMU 7.2 has no file: migration URI, and exec:cat would cost a shell, a cat and
        # a pipe copy of the whole state per restore: QEMU reads the file itself.
        args += ["-incoming", "defer" if ram else f"fd:{incoming}"]
    return args


def ram_args(ram: Path, memory_mb: int, *, shared: bool) -> list[str]:
    """QEMU options mapping the guest's memory from the file ``ram`` (see :func:`argv`)."""
    backend = (f"memory-backend-file,id={RAM_ID},size={memory_mb}M,mem-path={opt(ram)},"
               f"share={'on' if shared else 'off'}")  # fmt: skip
    return ["-object", backend, "-machine", f"memory-backend={RAM_ID}"]


async def load_state(qmp: Qmp, fd: int) -> None:
    """Start loading, from descriptor ``fd``, a state saved with its RAM in a file (a VM
    started with ``-incoming defer``)."""
    await set_ignore_shared(qmp, True)
    await qmp.call("migrate-incoming", uri=f"fd:{fd}")


async def set_ignore_shared(qmp: Qmp, on: bool) -> None:
    """Set :data:`IGNORE_SHARED` (a VM keeps what it was loaded with for what it saves)."""
    await qmp.call("migrate-set-capabilities", capabilities=[{"capability": IGNORE_SHARED,
                                                              "state": on}])  # fmt: skip


NO_HOST_LOOPBACK = (
    "sh", "-c",
    # Again on a guest that has them already (a fork of a running VM): replaced, not added.
    "for v in 4 6; do for p in 100 101; do while ip -$v rule del pref $p 2>/dev/null; do :;"
    " done; done; done;"
    " ip rule add pref 100 to 10.0.2.3 ipproto 17 dport 53 lookup main"
    " && ip rule add pref 100 to 10.0.2.3 ipproto 6 dport 53 lookup main"
    " && ip rule add pref 101 prohibit to 10.0.2.0/24"
    " && { [ ! -e /proc/net/if_inet6 ] || ip -6 rule add pref 101 prohibit to fec0::/64; }",
)  # fmt: skip
"""Guest root's step for ``network = "host"``: QEMU's user-mode network takes every address
of its virtual network but the guest's and the resolver's (10.0.2.2 above all, the default
gateway's; fec0::/64 over IPv6) for the host's own loopback, so any listener on the host's
127.0.0.1 (the daemon's port, another program's service) was one connection away, which
bwrap's host mode refuses. Packets *to* those addresses are refused in the guest (its agent
is never root there); packets routed *through* the gateway go out as before, and the
resolver's port 53 is kept (10.0.2.3 is the host's resolver, at any port: on a host whose
resolver listens on loopback, another port of it would be the host's loopback too)."""


async def spawn(args: list[str], log: Path, *, pass_fds: Sequence[int] = ()) -> int:
    """Start QEMU detached (own session, re-parented to init); its pid. ``pass_fds`` are
    inherited by QEMU (at the same numbers, which must be 10 or above: the shell that
    starts it may use 0-9)."""
    if any(fd < 10 for fd in pass_fds):
        raise ValueError("descriptors passed to QEMU must be 10 or above")
    script = 'exec 3>&1 >>"$0" 2>&1 </dev/null; "$@" 3>&- & echo $! >&3'
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", script, str(log), *args,
        stdout=asyncio.subprocess.PIPE, start_new_session=True, pass_fds=pass_fds,
        env=kept_env(os.environ, ("PATH", "TMPDIR")),  # a warm VM outlives its starter
    )  # fmt: skip
    out, _ = await proc.communicate()
    try:
        return int(out.strip())
    except ValueError:
        raise ProviderError(f"cannot start QEMU: {tail(log)}") from None


PF_KTHREAD = 0x00200000


def _cmdline(pid: int) -> bytes | None:
    """``pid``'s command line (NUL-separated), or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _names(cmdline: bytes | None, vm_id: str) -> bool:
    """Whether a command line is the QEMU of ``vm_id`` (``-name hal-<id>``)."""
    return cmdline is not None and f"hal-{vm_id}".encode() in cmdline.split(b"\0")


def alive(pid: int | None, vm_id: str) -> bool:
    """Whether ``pid`` is still the QEMU of ``vm_id`` (not a recycled pid).

    A process reads an empty command line for a moment in the middle of its ``execve`` and
    from when it starts exiting until it is a zombie: both count as alive (the first is QEMU
    starting, the second still holds its files and locks), unless it is a kernel thread.
    """
    if pid is None:
        return False
    cmdline = _cmdline(pid)
    if cmdline is None:
        return False
    if cmdline:
        return _names(cmdline, vm_id)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    state, flags = fields[0], int(fields[6])
    return state not in ("Z", "X", "x") and not flags & PF_KTHREAD


def find_vms() -> dict[str, int]:
    """Every running hal QEMU on this host: vm id -> pid (found by ``-name hal-<id>``)."""
    found: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parts = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not parts or not parts[0].endswith(b"qemu-system-x86_64"):
            continue
        for i, part in enumerate(parts[:-1]):
            if part == b"-name" and parts[i + 1].startswith(b"hal-"):
                found[parts[i + 1][4:].decode()] = int(entry.name)
    return found


async def kill(pid: int | None, vm_id: str) -> None:
    """SIGKILL the VM's QEMU and wait until it is gone."""
    since = procs.started(pid) if pid is not None and alive(pid, vm_id) else None
    if pid is None or since is None:
        return

    def proven() -> bool:  # never a signal to a pid not proven to be this VM's (its -name)
        return _names(_cmdline(pid), vm_id)

    if not await procs.kill_until_gone(pid, since=since, still=proven, gone_s=10):
        raise ProviderError(f"QEMU {pid} of VM {vm_id} survived SIGKILL")


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a console or log file, for error messages."""
    try:
        text = path.read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError:
        return "(no output)"
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(no output)"


class Qmp:
    """A minimal QMP client over the VM's monitor socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def connect(cls, path: Path, *, deadline: float) -> Qmp:
        """Connect (retrying until ``deadline``, monotonic) and negotiate capabilities."""
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)
        qmp = cls(reader, writer)
        await qmp._read()  # the greeting
        await qmp.call("qmp_capabilities")
        return qmp

    async def _read(self) -> dict[str, Any]:
        line = await self._reader.readline()
        if not line:
            raise ProviderError("QEMU closed its monitor")
        data: dict[str, Any] = json.loads(line)
        return data

    async def call(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command; its ``return`` value, or ProviderError."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()
        while True:
            reply = await self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise ProviderError(f"QEMU {command}: {reply['error'].get('desc', reply)}")

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def wait_console(
    console: Path, needle: str, *, pid: int, vm_id: str, deadline: float
) -> None:
    """Wait until ``needle`` appears on the console; past ``deadline`` (or if QEMU dies),
    raise with the console's last lines."""
    await wait_console_count(console, needle, 1, pid=pid, vm_id=vm_id, deadline=deadline)


async def wait_console_count(
    console: Path, needle: str, count: int, *, pid: int, vm_id: str, deadline: float
) -> None:
    """Wait until ``needle`` has appeared ``count`` times on the console (see
    :func:`wait_console`)."""
    wanted = needle.encode()
    while True:
        with contextlib.suppress(OSError):
            if console.read_bytes().count(wanted) >= count:
                return
        if not alive(pid, vm_id):
            raise ProviderError(f"VM {vm_id} exited while booting; console: {tail(console)}")
        if time.monotonic() > deadline:
            raise ProviderError(f"VM {vm_id} did not boot in time; console: {tail(console)}")
        await asyncio.sleep(0.05)


async def wait_restored(qmp: Qmp, *, vm_id: str, deadline: float) -> None:
    """Wait until a VM started with ``-incoming`` has loaded its saved state and runs."""
    while True:
        status = (await qmp.call("query-status"))["status"]
        if status == "running":
            return
        if status == "paused":
            # The state was saved from a paused VM, and QEMU restores it paused.
            await qmp.call("cont")
            continue
        if status not in ("inmigrate", "prelaunch", "restore-vm"):
            info = await qmp.call("query-migrate")
            why = info.get("error-desc", status)
            raise ProviderError(f"VM {vm_id}: restoring its saved state failed: {why}")
        if time.monotonic() > deadline:
            raise ProviderError(f"VM {vm_id}: restoring its saved state took too long")
        await asyncio.sleep(0.01)


async def save(qmp: Qmp, state: Path, *, vm_id: str, ram_file: bool = False) -> None:
    """Write the VM's state to ``state`` (the VM is left paused). ``ram_file``: its RAM is
    mapped shared from a file, which holds it: the state leaves it out. Otherwise the
    state holds every page, also of a VM restored from a state with a RAM file (its
    private copy): a fork of its snapshot restores into plain memory."""
    await set_ignore_shared(qmp, ram_file)
    with fs.atomic(state, mode=0o600, durable=False) as out:  # QEMU's `cat` writes it
        await qmp.call("migrate", uri=f"exec:cat > {shlex.quote(out.tmp)}")
        while True:
            info = await qmp.call("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                why = info.get("error-desc", status)
                raise ProviderError(f"VM {vm_id}: saving its state failed: {why}")
            await asyncio.sleep(0.02)
