"""The ``qemu`` provider: each sandbox is a QEMU microVM over a copy-on-write golden image.

A sandbox is a qcow2 overlay on a layer of its image, a QEMU process started by restoring
the image's saved VM state (or by booting, see ``boot``), and host directories shared in by
virtio-9p: the spec's workspace at ``/workspace`` and each bind at its target. Stopping
ends the VM and keeps every file (the overlay and the shares); starting boots a new VM over
them. Commands reach the guest over virtio-serial ports, so no TCP port is ever opened and
any number of VMs run side by side; the sandbox handle that runs them (over hal's exec agent
or ssh) is :mod:`.sandbox`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from hal9999 import fs
from hal9999.errors import ConfigError, ProviderError, SandboxNotFound
from hal9999.providers.base import Capabilities, SandboxInfo, doctor_in
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host import user as sandboxuser
from hal9999.providers.host.sandbox import HostProvider, SandboxRecord, check_spec
from hal9999.providers.qemu import mount as qemumount
from hal9999.providers.qemu import ssh as qemussh
from hal9999.providers.qemu import vm as qemuvm
from hal9999.providers.qemu.image.store import Image, ImageStore, hang_notice, images_root
from hal9999.providers.qemu.notice import note_unadopted
from hal9999.providers.qemu.sandbox import HOME, WORKDIR, QemuSandbox, run_root
from hal9999.providers.qemu.state import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MB,
    VmPlan,
    accel,
    default_limit,
    ensure_state,
    forced_accel,
    overlay,
    spawn_vm,
    state_ram,
    wait_vm,
)
from hal9999.providers.qemu.vm import RunDir, Shape, Share
from hal9999.spec import ArgvCommand, SandboxSpec

if TYPE_CHECKING:
    from hal9999.config import HalConfig

logger = logging.getLogger(__name__)
VM_RECORD = "vm.json"
SETUP = "/usr/local/lib/hal/setup"
"""The guest's start-up helper (``image/guest/hal-setup.c``): entropy, clock, limits, mounts."""


_WARNED: set[Path] = set()
"""Images this process has said :func:`warn_unpinged` of (once each, not every VM)."""


def warn_unpinged(image: Image) -> None:
    """Warn, once per process and image, that ``image``'s agent predates pings (a hung VM
    of it holds its commands; a quiet command of it is never taken for hung)."""
    notice = hang_notice(image.meta)
    if notice is None or image.dir in _WARNED:
        return
    _WARNED.add(image.dir)
    logger.warning("%s; %s", *notice)


class QemuConfig(BaseModel):
    """Settings of the ``qemu`` provider."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["qemu"] = "qemu"
    """Provider kind."""
    image: str = "default"
    """Image used when the spec names none (``hal image build`` makes ``default``)."""
    images_dir: Path | None = None
    """Where images live; ``HAL_QEMU_IMAGES`` or ``HAL_HOME/images`` when unset."""
    boot: Literal["restore", "cold"] = "restore"
    """``restore`` starts sandboxes from the image's saved VM state; ``cold`` boots them."""
    boot_timeout_s: float = 180.0
    """A VM not ready by then is killed and reported with its console's last lines."""


def image_store(config: HalConfig) -> ImageStore:
    """The images of this hal home: ``[providers.qemu] images_dir``, ``HAL_QEMU_IMAGES``,
    else ``HAL_HOME/images`` (the same place the provider looks)."""
    from hal9999.providers.registry import checked_settings

    settings = checked_settings(
        "qemu", QemuConfig, config.providers.get("qemu") or {}, config._origin
    )
    return ImageStore(settings.images_dir or images_root(config.home))


class VmRecord(BaseModel):
    """What ``vm.json`` holds about the sandbox's current VM."""

    model_config = ConfigDict(extra="forbid")

    pid: int | None = None
    """QEMU's pid."""
    image: str
    """The image (or snapshot) whose layer the overlay is on."""
    shape: dict[str, str | int]
    """Accelerator, vCPUs, memory, network."""
    started: Literal["restore", "cold"] = "restore"
    """How the VM came up."""
    start_s: float = 0.0
    """Seconds from QEMU start to a working exec channel."""
    exec_ports: int = 0
    """Ports of the guest's exec agent (from the image); 0: every command goes over ssh."""
    agent_pings: bool = False
    """Whether the guest's exec agent answers pings (from the image, see
    :attr:`ImageMeta.agent_pings`): only then does a command whose guest answers nothing
    for a while fail (:data:`.agent.ANSWER_S`)."""


class QemuProvider(HostProvider):
    """MicroVM sandboxes: QEMU over qcow2 overlays, host directories shared by virtio-9p."""

    name = "qemu"
    capabilities = Capabilities(
        isolation="vm",
        network_modes=frozenset({"none", "host"}),
        resource_limits=True,
        host_launch=True,
        snapshot=True,
    )
    config_model = QemuConfig

    doctor = doctor_in("hal9999.providers.qemu.doctor")
    """QEMU and the image tools, the images (and what a rebuild gives them), KVM."""

    def __init__(self, *, state_dir: Path, config: QemuConfig | None = None) -> None:
        self.config = config or QemuConfig()
        qemuvm.qemu_binary()  # missing QEMU is said once, here, with the apt-get line
        forced_accel(os.environ)  # a bad HAL_QEMU_ACCEL too, before any task
        super().__init__(state_dir=state_dir, cgroup="off")
        self.images = ImageStore(self.config.images_dir or images_root(state_dir.parent.parent))
        self._reconciled = False

    # -- shapes and images ----------------------------------------------------------------
    def image(self, spec: SandboxSpec) -> Image:
        """The image a spec names (or the configured default)."""
        return self.images.get(spec.image or self.config.image)

    async def shape(self, spec: SandboxSpec, image: Image) -> Shape:
        """The VM shape of a spec: vCPUs and memory from its resources, its network."""
        chosen, _ = await accel(self.images, image)
        wanted = spec.resources.cpus
        cpus = DEFAULT_CPUS if wanted is None else max(1, math.ceil(wanted))
        memory = spec.resources.memory_mb or DEFAULT_MEMORY_MB
        if memory < 128:
            raise ConfigError(f"a qemu sandbox needs at least 128 MiB of memory, not {memory}")
        return Shape(chosen, cpus, memory, "none" if spec.network == "none" else "user")

    def shares(self, spec: SandboxSpec) -> list[tuple[Share, str]]:
        """(share, target inside) for the workspace and each bind, parents first."""
        found = [(Share(spec.workspace, False), WORKDIR)] if spec.workspace else []
        found += [
            (Share(b.source, b.read_only), hostfs.normalize(b.target, "/")) for b in spec.binds
        ]
        if len(found) > qemuvm.SHARES:
            raise ConfigError(f"a qemu sandbox takes at most {qemuvm.SHARES} shared directories")
        return sorted(found, key=lambda item: item[1].count("/"))

    def indirect(self, spec: SandboxSpec) -> bool:
        """Whether the sandbox's shares go through host bind mounts, so a warm VM can be
        handed the next task's directories (pooled sandboxes, when hal may mount)."""
        from hal9999.providers.base import SLOT_LABEL

        return SLOT_LABEL in spec.labels and qemumount.can_mount()

    def exports(
        self, record: SandboxRecord
    ) -> tuple[builtins.list[tuple[Share, str]], builtins.list[tuple[str, str]]]:
        """What the VM exports (share, where the guest mounts it) and the binds the guest
        then makes (from, to). A pooled sandbox exports ``mnt/<i>`` and the host binds each
        source on ``mnt/<i>/d`` (see :mod:`.mount`); others export their sources."""
        shares = self.shares(record.spec)
        if not self.indirect(record.spec):
            return shares, []
        exported, guest_binds = [], []
        for index, (share, target) in enumerate(shares):
            point = self.store.dir(record.id) / "mnt" / str(index)
            self.mount_source(point, share)
            exported.append((Share(point, share.read_only), f"/run/hal/9p/{index}"))
            guest_binds.append((f"/run/hal/9p/{index}/d", target))
        return exported, guest_binds

    @staticmethod
    def mount_source(point: Path, share: Share) -> None:
        """(Re)bind ``share``'s source (links resolved) on ``point/d``."""
        (point / "d").mkdir(parents=True, exist_ok=True)
        qemumount.unmount(point / "d")
        source = Path(os.path.realpath(share.path))
        if not source.is_dir():
            raise ConfigError(f"shared directory {share.path} does not exist")
        qemumount.bind(source, point / "d", read_only=share.read_only)

    async def attach_workspace(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """Give a running pooled sandbox ``spec``'s workspace and binds (pool hand-over)."""
        record = self.store.load(sandbox_id)
        if not self.indirect(record.spec):
            raise ProviderError(f"sandbox {sandbox_id} was not made for hand-over")
        new = self.shares(spec)
        if [t for _, t in new] != [t for _, t in self.shares(record.spec)]:
            raise ConfigError("a hand-over must keep the sandbox's mount targets")
        await asyncio.to_thread(self._adopt_shares, record, spec)
        for index, (share, _) in enumerate(new):
            self.mount_source(self.store.dir(sandbox_id) / "mnt" / str(index), share)

    def attaches_workspaces(self) -> bool:
        """Whether :meth:`attach_workspace` works here (it needs bind mounts: root)."""
        return qemumount.can_mount()

    async def prime(self, sandbox_id: str) -> None:
        """Run ``true`` in a new pooled VM while it waits idle: under TCG a restored VM
        translates its command path (the guest agent's fork, exec) afresh, so the first
        command of a claimed VM pays a cost that every later one does not."""
        sandbox = await self.get(sandbox_id)
        result = await sandbox.exec(ArgvCommand(argv=("true",)))
        if not result.ok:
            said = result.stderr.decode(errors="replace").strip()[:200]
            raise ProviderError(
                f"sandbox {sandbox_id} failed its first command ({result.exit_code}): {said}"
            )

    # -- records ------------------------------------------------------------------------
    def vm_record(self, sandbox_id: str) -> VmRecord | None:
        """The sandbox's VM record, if it has one."""
        path = self.store.dir(sandbox_id) / VM_RECORD
        try:
            return VmRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def save_vm(self, sandbox_id: str, vm: VmRecord) -> None:
        """Write ``vm.json`` atomically."""
        path = self.store.dir(sandbox_id) / VM_RECORD
        fs.write_text(path, vm.model_dump_json(indent=2), mode=None, durable=False)

    def running(self, sandbox_id: str) -> bool:
        """Whether the sandbox's QEMU is alive."""
        vm = self.vm_record(sandbox_id)
        return vm is not None and qemuvm.alive(vm.pid, sandbox_id)

    # -- lifecycle --------------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> QemuSandbox:
        """Create and start a sandbox (an overlay, then a restored or booted VM)."""
        await self.reconcile()
        check_spec(self.name, self.capabilities, spec)
        self.shares(spec)
        self.image(spec)  # a missing image fails here, before anything is made
        sandbox = await super().create(spec)
        assert isinstance(sandbox, QemuSandbox)
        return sandbox

    def _claim_ids(self, record: SandboxRecord) -> SandboxRecord:
        # A root hal's VM must not run commands as root: QEMU (root) writes the 9p shares
        # with the guest's ownership and modes, so guest root could leave a setuid-root
        # program in a host directory. A uid of its own, as bwrap's and docker's.
        if record.uid is None and sandboxuser.privileged():
            uid = sandboxuser.allocate(f"{self.state_dir} {record.id}")
            record = record.model_copy(update={"uid": uid})
        return record

    def _adopt_shares(self, record: SandboxRecord, spec: SandboxSpec) -> None:
        """Hand ``spec``'s writable shares to the sandbox's uid (a root hal only)."""
        if record.uid is not None:
            for share, _ in self.shares(spec):
                if not share.read_only:
                    sandboxuser.adopt(share.path, record.uid)

    async def _prepare(self, record: SandboxRecord) -> SandboxRecord:
        if self.running(record.id):
            return record
        if record.uid is None and sandboxuser.privileged():  # a record from before uids
            record = self._claim_ids(record)
            self.store.save(record)  # now, so that destroy() gives the uid back on failure
        await asyncio.to_thread(self._adopt_shares, record, record.spec)
        directory = self.store.dir(record.id)
        disk = directory / "disk.qcow2"
        vm = self.vm_record(record.id)
        image = self.images.get(vm.image) if vm else self.image(record.spec)
        shape = await self.shape(record.spec, image)
        fresh = not disk.exists()
        # else: a stopped sandbox's disk holds its files; only a boot is consistent with it.
        for attempt in (1, 2):
            incoming = None
            if fresh:
                disk.unlink(missing_ok=True)  # a failed first attempt may have written to it
                layer = image.disk
                if self.config.boot == "restore":
                    await ensure_state(image, shape)
                    layer = image.state_dir(shape.key) / "disk.qcow2"
                    incoming = image.state_dir(shape.key) / "vm.state"
                await overlay(layer, disk)
            try:
                await self.boot(record, image, shape, disk, incoming)
            except ProviderError as exc:
                # A guest that started but whose first commands hung: one more start.
                if attempt == 2 or not exc.details.get("retry"):
                    raise
                logger.warning("sandbox %s: VM start failed, starting it again: %s",
                               record.id, exc.one_line())  # fmt: skip
                continue
            return record
        raise AssertionError("unreachable")

    async def boot(
        self, record: SandboxRecord, image: Image, shape: Shape, disk: Path, incoming: Path | None
    ) -> None:
        """Start the VM, connect its channel, mount the shares."""
        shares, guest_binds = self.exports(record)
        plan = VmPlan(record.id, image, shape, disk, self.store.dir(record.id),
                      [s for s, _ in shares], incoming,
                      state_ram(incoming) if incoming else None)  # fmt: skip
        started = time.monotonic()
        limit = self.config.boot_timeout_s if incoming is None else default_limit(plan)
        deadline = started + limit
        pid = await spawn_vm(plan, deadline=deadline)
        ports, pings = image.meta.exec_ports, image.meta.agent_pings
        warn_unpinged(image)
        vm = VmRecord(
            pid=pid, image=image.name, shape=shape.__dict__,
            started="restore" if incoming else "cold", exec_ports=ports, agent_pings=pings,
        )  # fmt: skip
        self.save_vm(record.id, vm)
        run = RunDir(record.id)
        qemussh.write_config(run, key=image.key, known_hosts=image.known_hosts)
        master: asyncio.Task[None] | None = None
        try:
            if incoming is not None and not ports:
                # A restored guest's sshd already waits: ssh starts while QEMU still loads
                # the state (its process start and first messages overlap the restore).
                master = asyncio.create_task(self.connect(run, plan.log))
            await wait_vm(plan, pid, deadline=deadline)  # kills the VM when it fails
        except BaseException:
            if master is not None:
                master.cancel()
                await asyncio.gather(master, return_exceptions=True)
            await qemuvm.kill(pid, record.id)
            raise
        try:
            if not ports:  # with the exec agent, ssh connects when something first needs it
                await (master if master is not None else self.connect(run, plan.log))
            # Fresh host entropy on stdin: guests restored from one saved state share its RNG.
            setup = self.setup_argv(record, shares, guest_binds)
            if record.uid is not None and image.meta.setup_adopts:  # no find/chown execs
                uid = str(record.uid)
                setup += [a for d in self.adopt_places(record) for a in ("adopt", uid, d)]
            await run_root(run, ports, setup, pings=pings, stdin=os.urandom(64), time_limit=60,
                           restored=incoming is not None)  # fmt: skip
            if record.uid is not None and not image.meta.setup_adopts:
                note_unadopted(image)
                await run_root(run, ports, self.adopt_argv(record), pings=pings, time_limit=60)
            if record.spec.network != "none":  # NAT, never the host's loopback
                await run_root(run, ports, list(qemuvm.NO_HOST_LOOPBACK), pings=pings,
                               time_limit=60)  # fmt: skip
        except ProviderError as exc:
            await qemuvm.kill(pid, record.id)
            raise ProviderError(
                f"{exc.message}; console: {qemuvm.tail(plan.console)}", hint=exc.hint, retry=True
            ) from exc
        except BaseException:
            await qemuvm.kill(pid, record.id)
            raise
        vm.start_s = round(time.monotonic() - started, 3)
        self.save_vm(record.id, vm)

    @staticmethod
    async def connect(run: RunDir, log: Path) -> None:
        """Connect the VM's ssh ControlMaster (ssh's complaints go to QEMU's log)."""
        await qemussh.start_master(run, log=log, time_limit=60)

    @staticmethod
    def setup_argv(
        record: SandboxRecord,
        shares: builtins.list[tuple[Share, str]],
        guest_binds: builtins.list[tuple[str, str]],
    ) -> builtins.list[str]:
        """The guest's start-up command: clock, pid limit, 9p mounts, then binds (made just
        before it runs, so the clock it sets is as fresh as can be)."""
        args = [SETUP, f"{time.time():.6f}", str(record.spec.resources.pids or "max")]
        for index, (share, target) in enumerate(shares):
            mode = "ro" if share.read_only else "rw"
            args += ["9p", qemuvm.SHARE_TAG.format(index), target, mode]
        for source, target in guest_binds:
            args += ["bind", source, target]
        return args

    def adopt_places(self, record: SandboxRecord) -> builtins.list[str]:
        """Where the guest hands its user's files on the VM's disk to the sandbox's uid (a
        root hal): the image's home is its uid 1000's, and a fork's files are the uid's of
        the sandbox it was snapshotted from. Not the shares (the host hands those over)."""
        shared = {target for _, target in self.shares(record.spec)}
        return [d for d in (HOME, "/tmp", "/var/tmp") if d not in shared]

    def adopt_argv(self, record: SandboxRecord) -> builtins.list[str]:
        """That hand-over as a command of its own, for images whose hal-setup predates its
        ``adopt`` step (``setup_adopts`` false). Links are changed, never followed."""
        assert record.uid is not None
        uid = str(record.uid)
        return ["find", *self.adopt_places(record), "-xdev", "!", "-uid", "0", "!", "-uid", uid,
                "-exec", "chown", "-h", f"{uid}:{uid}", "{}", "+"]  # fmt: skip

    async def _kill(self, record: SandboxRecord) -> None:
        vm = self.vm_record(record.id)
        run = RunDir(record.id)
        if vm is not None and qemuvm.alive(vm.pid, record.id):
            if record.state == "stopped":
                # The disk is kept: flush the guest's caches to it first.
                with contextlib.suppress(ProviderError):
                    await run_root(run, vm.exec_ports, ["sync"], pings=vm.agent_pings,
                                   time_limit=10)  # fmt: skip
            await qemuvm.kill(vm.pid, record.id)
        await asyncio.to_thread(shutil.rmtree, run.path, True)
        qemumount.unmount_all(self.store.dir(record.id) / "mnt")

    async def destroy(self, sandbox_id: str) -> None:
        """Stop and remove the sandbox; never anything mounted into it. Idempotent."""
        # First, so the directory is deleted only with nothing mounted in it (raises if
        # something stays); _kill unmounts again after the VM is gone.
        qemumount.unmount_all(self.store.dir(sandbox_id))
        try:
            uid = self.store.load(sandbox_id).uid
        except (SandboxNotFound, ProviderError):
            uid = None
        await super().destroy(sandbox_id)
        if uid is not None:
            sandboxuser.release(uid)

    async def get(self, sandbox_id: str) -> QemuSandbox:
        """A handle on an existing sandbox; :class:`SandboxNotFound` when gone."""
        return self._handle(self.store.load(sandbox_id))

    def _handle(self, record: SandboxRecord) -> QemuSandbox:
        return QemuSandbox(self, record)

    async def list(self) -> list[SandboxInfo]:
        """Every sandbox; one whose VM has died is reported stopped (start boots it again)."""
        await self.reconcile()
        infos = []
        for record in self.store.all():
            info = record.info()
            if info.state == "running" and not self.running(record.id):
                info = SandboxInfo(info.id, info.provider, "stopped", info.spec, info.created_at)
            infos.append(info)
        return infos

    async def reconcile(self, *, force: bool = False) -> builtins.list[str]:
        """Kill VMs of this state dir no running sandbox owns, finish destroys a crash cut
        short, and remove stale sandbox and run dirs.

        Runs once per provider object unless ``force``; returns what it removed.
        """
        if self._reconciled and not force:
            return []
        self._reconciled = True
        removed: builtins.list[str] = []
        mine = f"{self.state_dir}/".encode()
        vms = qemuvm.find_vms()
        for vm_id, pid in vms.items():
            try:
                if mine not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
            except OSError:
                continue
            try:
                state = self.store.load(vm_id).state
            except (SandboxNotFound, ProviderError):
                state = "destroyed"
            if state != "running":
                await qemuvm.kill(pid, vm_id)
                removed.append(f"vm {vm_id}")
        for record in self.store.all():
            if record.state == "destroyed":  # a destroy that a crash cut short: finish it
                await self.destroy(record.id)
                removed.append(f"sandbox {record.id}")
        for child in self.state_dir.iterdir() if self.state_dir.is_dir() else []:
            if child.is_dir() and not (child / "sandbox.json").exists():
                if time.time() - child.stat().st_mtime > 60:  # not one being created now
                    qemumount.unmount_all(child)
                    await asyncio.to_thread(shutil.rmtree, child, True)
                    removed.append(f"dir {child.name}")
        for run in qemuvm.run_root().iterdir():
            if run.name not in vms and time.time() - run.stat().st_mtime > 60:
                await asyncio.to_thread(shutil.rmtree, run, True)
                removed.append(f"run {run.name}")
        return removed

    # -- snapshot and fork ----------------------------------------------------------------
    async def snapshot(self, sandbox_id: str, name: str | None = None) -> str:
        """Save the sandbox's disk and VM state as a new image; the sandbox goes on from it."""
        from hal9999.providers.qemu.snap import snapshot

        return await snapshot(self, sandbox_id, name)

    async def fork(self, image: str, count: int, spec: SandboxSpec) -> builtins.list[QemuSandbox]:
        """``count`` new sandboxes from ``image`` (a snapshot), started concurrently."""
        from hal9999.providers.qemu.snap import fork

        return await fork(self, image, count, spec)
