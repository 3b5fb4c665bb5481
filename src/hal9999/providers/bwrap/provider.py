"""The ``bwrap`` provider: each command runs in fresh Linux namespaces via bubblewrap.

A sandbox is a set of host directories (workspace, home, tmp under
``<state_dir>/<id>/``) plus a cgroup; every command is a new ``bwrap`` invocation over
them, with all namespaces unshared, every capability dropped, a seccomp filter, a read-only
``/usr`` and a curated read-only ``/etc``, as a host uid of the sandbox's own when hal runs
as root (:mod:`hal9999.providers.host.user`; docs/security.md). Nothing in Python sits in
the exec path: a small launcher (:func:`hal9999.providers.host.exec.launcher_argv`) joins
the cgroup and execs bwrap, so the per-command cost is bwrap's. The options each command's
bwrap gets are built in :mod:`.args`.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hal9999 import hostread
from hal9999.envvars import env_argv
from hal9999.errors import HalError, ProviderError, ProviderUnavailable, SandboxNotFound
from hal9999.providers.base import Capabilities, Command, ExecResult, Launch, doctor_in
from hal9999.providers.bwrap import etc as hostetc
from hal9999.providers.bwrap import keeper as keepers
from hal9999.providers.bwrap import seccomp, usernet
from hal9999.providers.bwrap.args import (
    ETC_VIEW,
    HOME,
    WORKDIR,
    account_data,
    mount_args,
    namespace_args,
    sandbox_mounts,
    with_parents,
)
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host import user as sandboxuser
from hal9999.providers.host.sandbox import HostProvider, HostSandbox, SandboxRecord
from hal9999.spec import ArgvCommand, to_argv

logger = logging.getLogger(__name__)

HOST_SESSION_VARS = (
    "TMUX", "TMUX_PANE", "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "STY", "WINDOW",
    "SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "DISPLAY", "WAYLAND_DISPLAY",
    "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR",
)  # fmt: skip
"""Variables a terminal multiplexer or login session adds around the launcher: they name
host sockets and paths, so bwrap drops them unless the command's own env sets them."""
RUN_DIR = "run"
"""Host-side scratch of the launcher (the network wiring's fifos) and the keeper's record
(:mod:`.keeper`), never mounted inside."""
DROP_FILE = "hal-drop"
"""The uid switch's name among the provider's shared files without a version (a program
found gone since); each version is ``hal-drop-<digest>`` (a link to, or copy of, the built
one), which a root hal's sandboxes bind read-only at
:data:`hal9999.providers.host.user.DROP_HELPER`."""
SECCOMP_FILE = "seccomp.bpf"
"""The compiled filter among the provider's shared files (``-<hash of it>``, see
:mod:`.seccomp`), which the launcher opens for every command."""


class BwrapConfig(BaseModel):
    """Settings of the ``bwrap`` provider."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    kind: Literal["bwrap"] = "bwrap"
    """Provider kind."""
    bwrap: str = "bwrap"
    """The bubblewrap program: a name looked up on PATH, or a path."""
    cgroup: Literal["auto", "off"] = "auto"
    """``auto`` puts each sandbox in a cgroup when the host allows (needed for resource
    limits); ``off`` relies on bwrap's pid namespace and the ``HAL_SANDBOX`` marker."""
    ro_paths: tuple[Path, ...] = ()
    """Further host paths shown read-only at the same place inside, e.g. ``/opt``."""
    host_network: Literal["usernet", "shared"] = "usernet"
    """What ``network = "host"`` means: ``usernet`` (default) gives the sandbox its own
    network namespace with outbound access through slirp4netns and no way to the host's
    loopback; ``shared`` shares the host's namespace, exposing every loopback listener and
    abstract unix socket of the host (docs/security.md)."""


def keeps(record: SandboxRecord) -> bool:
    """Whether the sandbox's commands may enter a keeper (:mod:`.keeper`) rather than each
    start bwrap: a root hal's sandboxes on the host's /usr without host networking, when the
    static launcher and the kernel can. Otherwise every command is a bwrap."""
    return (
        record.uid is not None
        and record.spec.network != "host"
        and record.spec.rootfs is None
        and hostexec.launch_helper_enters()
        and keepers.kernel_ok()
    )


class BwrapSandbox(HostSandbox):
    """Host directories and a cgroup; each command is a fresh bubblewrap invocation."""

    home = HOME

    def __init__(self, owner: "BwrapProvider", record: SandboxRecord) -> None:
        spec = record.spec
        directory = owner.store.dir(record.id)
        mounts = sandbox_mounts(record, directory)
        super().__init__(owner, record, hostfs.PathMap(mounts, cwd=WORKDIR))
        self._bwrap = owner.bwrap
        self.cgroup = owner.cgroup(record)
        """The cgroup holding every process of the sandbox (None when cgroups are off)."""
        self._procs = [] if self.cgroup is None else self.cgroup.join_files()
        self.limits = owner.resources(spec)
        """The limits in force (the spec's, defaults filled in where enforced)."""
        disk = self.limits.disk_mb
        # No single file beyond the disk limit (SIGXFSZ, then EFBIG); the total is watched.
        self._max_file = disk << 20 if disk else 0
        self._seccomp = str(owner.seccomp_file) if owner.seccomp_file is not None else ""
        host_net = spec.network == "host"
        shared_net = host_net and owner.config.host_network == "shared"
        slirp = usernet.program() if host_net and not shared_net else None
        userns = record.uid is None
        # Without slirp4netns the namespace stays empty (loopback only): it fails closed.
        self._net = usernet.prefix(str(directory / RUN_DIR), slirp, userns=userns) if slirp else []
        self._shared_net = shared_net
        namespaces = namespace_args(
            record.uid,
            seccomp_fd=bool(self._seccomp),
            shared_net=shared_net,
            usernet_wired=bool(self._net),
            die_with_parent=True,
        )
        # The static uid switch (cheaper per command than setpriv's loader and locale),
        # when prepared (and as trustworthy as the built one).
        drop = owner.drop_file
        helper = (
            record.uid is not None
            and spec.rootfs is None
            and sandboxuser.trusted_program(drop) is not None
        )
        self._mounts = with_parents(
            mount_args(
                record, mounts, owner.shared, helper=drop if helper else None,
                ro_paths=owner.config.ro_paths, shared_net=shared_net,
            )
        )  # fmt: skip
        self._args = [*namespaces, *self._mounts]
        self.data = account_data(record)
        """What the launcher puts on the fds bwrap reads the account files from."""
        self._provider = owner
        self._shared = [p for p in (self._seccomp, str(drop) if helper else "") if p]
        """The provider's files each command opens or binds by path (made again when gone)."""
        self._etc = owner.etc if spec.rootfs is None else None
        self._keeps = keeps(record)
        self._attached: tuple[keepers.Keeper, list[str]] | None = None
        """The keeper and args for which this handle found every bind in place (a later
        command with the same args skips the ``stat`` calls)."""
        self._accounts = record.uid is not None
        self._drop = sandboxuser.drop_privileges(
            record.uid, rootfs=spec.rootfs is not None, helper=helper
        )
        self._drop_file = str(drop) if helper else None

    def _bwrap_args(self, namespaces: list[str] | None = None) -> list[str]:
        """The namespace and mount options of a command now (the current /etc view); with
        other ``namespaces`` than a command's (the keeper's) before the mounts."""
        args = self._args if namespaces is None else [*namespaces, *self._mounts]
        if self._etc is not None:
            view, dirs = self._etc.current(accounts=self._accounts)
            at = args.index(ETC_VIEW)
            # The host's curated directories, live, over their mount points in the view.
            live = [a for name in dirs for a in ("--ro-bind-try", f"/etc/{name}", f"/etc/{name}")]
            args = [*args[:at], str(view), *args[at + 1 : at + 2], *live, *args[at + 2 :]]
        return args

    def _argv(self, command: Command, env: Mapping[str, str], *, new_session: bool) -> list[str]:
        cwd = self._paths.normalize(command.cwd or WORKDIR)
        if not all(map(os.path.exists, self._shared)):
            # The HAL_HOME's cache was emptied by hand: as the /etc view, made again.
            self._provider.share(self._record)
        # A new session keeps a command from pushing keystrokes into a terminal (TIOCSTI).
        session = ["--new-session"] if new_session else []
        # What a host wrapper (tmux's pane) adds to the environment names host paths.
        unset = [a for name in HOST_SESSION_VARS if name not in env for a in ("--unsetenv", name)]
        args = self._bwrap_args()
        keeper = keepers.read(self.dir / RUN_DIR) if self._keeps else None
        if keeper is not None and (keeper, args) == self._attached:
            stale: list[str] | None = []  # found all there before, for these args
        elif keeper is not None and (wanted := keepers.binds(args)) is not None:
            stale = keepers.stale_mounts(keeper, wanted)
            self._attached = None if stale or stale is None else (keeper, args)
        else:
            stale = None
        bwrap = [
            *self._net, self._bwrap, *session, *args, *unset,
            "--chdir", cwd, "--", *self._drop, *to_argv(command),
        ]  # fmt: skip
        if keeper is not None and stale is not None:
            enter = [str(keeper.pid), str(keeper.mnt_ino), cwd, "1" if new_session else "0"]
            inside = [*self._drop, *to_argv(command)]
            if self._drop[:1] == [sandboxuser.DROP_HELPER] and hostexec.launch_helper_drops():
                # The launcher switches the command's process to the uid itself, as hal-drop
                # would (the same code, scripts/hal-drop.h): one exec fewer a command.
                enter += ["--uid", self._drop[1]]
                inside = list(to_argv(command))
            # The keeper may die (a reset, a restart, a kill) between its read here and the
            # launcher's open of its namespaces: then the launcher runs this bwrap instead.
            enter += [*unset, *stale, "--else", str(len(bwrap)), *bwrap]
            return hostexec.launcher_argv(
                self.id, self._procs, inside, seccomp=self._seccomp,
                max_file_bytes=self._max_file, enter=enter, data=self.data,
            )  # fmt: skip
        return hostexec.launcher_argv(
            self.id, self._procs, bwrap, seccomp=self._seccomp, max_file_bytes=self._max_file,
            data=self.data,
        )  # fmt: skip

    def keeper_argv(self) -> list[str]:
        """The argv of the sandbox's keeper (see :mod:`.keeper`): the sandbox as a command
        would get it, running ``sleep`` (or the uid switch waiting itself, one exec fewer);
        its pid on fd 3; no seccomp fd, it outlives its parent, and no /proc of its own
        (:func:`.keeper.without_proc`: each command mounts one)."""
        namespaces = namespace_args(
            self._record.uid,
            seccomp_fd=False,
            shared_net=self._shared_net,
            usernet_wired=bool(self._net),
            die_with_parent=False,
        )
        unset = [a for name in HOST_SESSION_VARS for a in ("--unsetenv", name)]
        sandbox = keepers.without_proc(self._bwrap_args(namespaces))
        keep = [*self._drop, "sleep", "infinity"]
        with contextlib.suppress(OSError):  # gone meanwhile: made again, or setpriv, later
            if self._drop_file is not None and sandboxuser.waits(self._drop_file):
                keep = [*self._drop[:2], "--wait"]
        return [
            self._bwrap, "--new-session", *sandbox, *unset,
            "--chdir", "/", "--info-fd", "3", "--", *keep,
        ]  # fmt: skip

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """The host argv (launcher + bwrap) and exact env that run ``command`` inside."""
        exact = self.command_env(command, env)
        return Launch(argv=self._argv(command, exact, new_session=True), env=exact, cwd=self.dir)

    def attach_command(self) -> list[str]:
        """An interactive bash inside; it keeps the terminal, which job control needs."""
        shell = ArgvCommand(argv=("bash", "-i"))
        exact = self.command_env(shell, None)
        return env_argv(exact, self._argv(shell, exact, new_session=False))

    def oom_kills(self) -> int:
        """How many processes inside the kernel has killed for exceeding the memory limit."""
        return 0 if self.cgroup is None else self.cgroup.oom_kills()

    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a command to completion; an out-of-memory kill is noted on stderr."""
        limited = self.cgroup is not None and self.limits.memory_mb is not None
        before = self.oom_kills() if limited else 0
        result = await super()._exec_command(command, env, stdin, timeout, stdout_limit)
        if limited and not result.ok and self.oom_kills() > before:
            # ExecResult has no field for it, and a bare 137 does not say why.
            note = (
                f"\nhal: killed by the sandbox memory limit ({self.limits.memory_mb} MiB)\n"
            ).encode()
            result = ExecResult(result.exit_code, result.stdout, result.stderr + note)
        return result


class BwrapProvider(HostProvider):
    """Sandboxes in Linux namespaces with bubblewrap, limited by cgroups."""

    name = "bwrap"
    capabilities = Capabilities(
        isolation="namespace",
        network_modes=frozenset({"none", "host"}),
        resource_limits=True,
        host_launch=True,
    )
    config_model = BwrapConfig

    doctor = doctor_in("hal9999.providers.bwrap.doctor")
    """bubblewrap, the sandbox boundary here (user, seccomp, networks), cgroups."""

    def __init__(self, *, state_dir: Path, config: BwrapConfig | None = None) -> None:
        self.config = config or BwrapConfig()
        found = shutil.which(self.config.bwrap)
        if found is None:
            raise ProviderUnavailable(
                f"bubblewrap ({self.config.bwrap}) is not installed or not on PATH",
                hint="apt-get install bubblewrap (dnf install bubblewrap on Fedora)",
            )
        self.bwrap = found
        super().__init__(state_dir=state_dir, cgroup=self.config.cgroup)
        self.etc = hostetc.EtcView(state_dir)
        """The curated /etc every sandbox without a rootfs binds (see :mod:`.etc`)."""
        self._started: dict[str, tuple[tuple[int, int, int] | None, BwrapSandbox]] = {}
        """The handle each sandbox's last start made, with its record file as the start
        saved it: the prime after a pool reset takes it (see :meth:`prime`)."""
        self.shared = hostetc.shared_for(state_dir)
        """The read-only files each sandbox's ``etc`` links to rather than copies."""
        self.drop_helper = sandboxuser.drop_helper()
        """The static uid switch a root hal's commands start with, or None for setpriv."""
        self.drop_file = self.shared / DROP_FILE
        """Where the sandboxes find :attr:`drop_helper` among the shared files: a name per
        version of it (:func:`hal9999.providers.host.user.installed_name`), set again by
        :meth:`share`."""
        self._name_drop_file()
        self._program = seccomp.build() if seccomp.supported() else None
        program_id = hashlib.sha256(self._program or b"").hexdigest()[:16]
        self.seccomp_file = (
            None if self._program is None else self.shared / f"{SECCOMP_FILE}-{program_id}"
        )
        """The filter every command's launcher opens: one file, named by its contents."""

    def _own_dirs(self, record: SandboxRecord) -> list[str]:
        """``tmp`` (outlives each exec), ``home`` and an own ``workspace`` where no bind or
        spec workspace takes their place; a reset swaps each for a fresh one."""
        # Not where a bind takes the place (a task's home): one inode less per create.
        bound = {hostfs.normalize(b.target, "/") for b in record.spec.binds}
        own = {"home": HOME, "tmp": "/tmp"}
        if record.spec.workspace is None:
            own["workspace"] = WORKDIR
        return [name for name, target in own.items() if target not in bound]

    def _claim_ids(self, record: SandboxRecord) -> SandboxRecord:
        if record.uid is None and sandboxuser.privileged():
            uid = sandboxuser.allocate(f"{self.state_dir} {record.id}")
            record = record.model_copy(update={"uid": uid})
        return record

    async def _prepare(self, record: SandboxRecord) -> SandboxRecord:
        if record.spec.network == "host" and self.config.host_network == "usernet":
            usernet.check(userns=record.uid is None and not sandboxuser.privileged())
        if record.uid is None and sandboxuser.privileged():  # a record from before uids
            record = self._claim_ids(record)
            self.store.save(record)  # now, so that destroy() gives the uid back on failure
        # The directories in a thread while the cgroup is made here: on every create, start
        # and pool reset, the two are independent.
        dirs = asyncio.ensure_future(asyncio.to_thread(self.prepare_dirs, record))
        fresh = record.cgroup is None
        try:
            record = await super()._prepare(record)
        except BaseException:
            await asyncio.wait([dirs])  # done before anything cleans up after us
            if not dirs.cancelled():
                dirs.exception()  # retrieved: ours is the error to report
            raise
        try:
            await dirs
        except BaseException:
            # A cgroup made just now for a record that named none (a start of one made
            # without cgroups) is in no saved record, so destroy() would not find it: it goes
            # here (create records its cgroup before making it, and a start's stays for it).
            made = self.cgroup(record)
            if fresh and made is not None:
                with contextlib.suppress(HalError, OSError):
                    await made.remove()
            raise
        return record

    def prepare_dirs(self, record: SandboxRecord) -> None:
        """Create the sandbox's own directories (home, tmp, workspace unless the spec has
        one) and hand every writable directory the sandbox sees to its user. Idempotent;
        also the way to give a sandbox a fresh one after removing it (e.g. ``tmp``)."""
        directory = self.store.dir(record.id)
        for name in self._own_dirs(record):
            (directory / name).mkdir(exist_ok=True)
            # Like the host's /tmp: anyone writes, nobody deletes another's files.
            os.chmod(directory / name, 0o1777 if name == "tmp" else 0o755)
        # The read-only files of the sandbox's commands are the provider's, one of each for
        # all its sandboxes (bound or opened by path), and its account files come through
        # pipes: no inode of the sandbox's own for them, since each costs.
        if record.spec.network == "host":
            (directory / RUN_DIR).mkdir(mode=0o700, exist_ok=True)
        self.share(record)
        if record.uid is None:
            return
        for mount in sandbox_mounts(record, directory):
            # Writable means writable by the sandbox's uid: workspace, home, tmp, and the
            # writable binds of the spec (documented in docs/security.md).
            if mount.writable:
                sandboxuser.adopt(mount.source, record.uid)

    def share(self, record: SandboxRecord) -> None:
        """Make sure of the provider's read-only files the sandbox's commands use (left alone
        when in place): the filter, the uid switch, usernet's ``resolv.conf``."""
        if self._program is not None and self.seccomp_file is not None:
            hostread.write_shared(self.seccomp_file, self._program)
        if record.uid is not None and record.spec.rootfs is None and self.drop_helper:
            self._name_drop_file()  # a rebuild of it goes under its own name
            sandboxuser.install_helper(self.drop_helper, self.drop_file)
        if record.spec.network == "host":
            hostread.write_shared(self.shared / "resolv.conf", usernet.RESOLV_CONF.encode())

    def _name_drop_file(self) -> None:
        """Point :attr:`drop_file` at the current version of :attr:`drop_helper` (left as it
        was when the program is gone meanwhile: its sandboxes then use setpriv)."""
        if self.drop_helper is not None:
            with contextlib.suppress(OSError):
                self.drop_file = self.shared / sandboxuser.installed_name(self.drop_helper)

    async def _start(self, record: SandboxRecord) -> HostSandbox:
        sandbox = await super()._start(record)
        assert isinstance(sandbox, BwrapSandbox)
        self._started[record.id] = (self.store.kept_stamp(record.id), sandbox)
        return sandbox

    async def prime(self, sandbox_id: str) -> None:
        """Start a new pooled sandbox's keeper (:mod:`.keeper`) while it waits idle, so that
        its commands enter it rather than each start bwrap. A keeper that cannot start is
        logged, not raised: the sandbox is whole without one (each command is a bwrap)."""
        stamp, handle = self._started.pop(sandbox_id, (None, None))
        if handle is None or stamp is None or stamp != self.store.stamp(sandbox_id):
            # Not the handle the last start (a pool reset) made while nobody saved the
            # record since: read it (a read, a validation and a handle).
            handle = self._handle(self.store.load(sandbox_id))
        record = handle._record
        if not keeps(record):
            return
        try:
            await self._start_keeper(record, handle)
        except (ProviderError, OSError) as exc:
            logger.warning("sandbox %s runs without a keeper: %s", sandbox_id, exc)

    async def _start_keeper(self, record: SandboxRecord, handle: BwrapSandbox) -> None:
        directory = self.store.dir(record.id) / RUN_DIR
        directory.mkdir(mode=0o700, exist_ok=True)  # here, not at create: one inode less
        keepers.stop(directory)
        env = {keepers.MARKER_VAR: str(self.store.dir(record.id)), "PATH": "/usr/bin:/bin"}
        if keepers.sweep_due():  # once a minute: no thread hop for the other primes
            await asyncio.to_thread(keepers.sweep)
        helper = hostexec.launch_helper()
        assert helper is not None  # keeps() holds
        await keepers.start(helper, handle.keeper_argv(), env, directory, data=handle.data)

    async def reset(self, sandbox_id: str) -> HostSandbox:
        """As :meth:`HostProvider.reset`, and without its keeper: nothing of the last task's
        namespaces is left for the next (the pool primes it again, a fresh keeper, when no
        claim waits for it)."""
        keepers.stop(self.store.dir(sandbox_id) / RUN_DIR)
        return await super().reset(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        """Stop and remove the sandbox, and give its uid back. Idempotent."""
        self._started.pop(sandbox_id, None)
        try:
            uid = self.store.load(sandbox_id).uid
        except (SandboxNotFound, ProviderError):
            uid = None
        run = self.store.dir(sandbox_id) / RUN_DIR
        if not keepers.stop(run) and uid is not None and run.is_dir():
            # A keeper was started (it made run/) but its record is gone: found by its
            # marker. Without run/ there never was one: no scan of every process.
            marker = str(self.store.dir(sandbox_id))
            await hostexec.kill_marked_by(keepers.MARKER_VAR, marker, what="keeper")
        await super().destroy(sandbox_id)
        if uid is not None:
            sandboxuser.release(uid)

    def _handle(self, record: SandboxRecord) -> BwrapSandbox:
        return BwrapSandbox(self, record)
