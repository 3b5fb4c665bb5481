"""The ``bwrap`` provider: each command runs in fresh Linux namespaces via bubblewrap.

A sandbox is a set of host directories (workspace, home, tmp under
``<state_dir>/<id>/``) plus a cgroup; every command is a new ``bwrap`` invocation over
them, with all namespaces unshared, every capability dropped, a read-only ``/usr`` and a
curated read-only ``/etc``. Nothing in Python sits in the exec path: a constant ``sh``
script joins the cgroup and execs bwrap, so the per-command cost is bwrap's own.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hal9999.errors import ProviderUnavailable
from hal9999.providers import hostexec, hostfs
from hal9999.providers.base import Capabilities, Command, ExecResult, Launch
from hal9999.providers.hostsandbox import HostProvider, HostSandbox, SandboxRecord
from hal9999.spec import ArgvCommand, to_argv

WORKDIR = "/workspace"
HOME = "/home/hal"
MERGED_USR = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
ETC = (
    "passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
    "services", "protocols", "ssl", "ca-certificates", "pki", "alternatives", "ld.so.cache",
    "localtime", "gitconfig", "os-release", "mime.types",
)  # fmt: skip
"""What toolchains (git, node, python, TLS, DNS) need from the host's /etc; no shadow, no
sudoers, none of the rest. Each is a bind mount costing ~0.2 ms per exec, so the list is lean."""
ROOTFS_SKIP = frozenset({"proc", "dev", "sys", "tmp", "run", "home", "workspace"})


class BwrapConfig(BaseModel):
    """Settings of the ``bwrap`` provider."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["bwrap"] = "bwrap"
    """Provider kind."""
    bwrap: str = "bwrap"
    """The bubblewrap program: a name looked up on PATH, or a path."""
    cgroup: Literal["auto", "off"] = "auto"
    """``auto`` puts each sandbox in a cgroup when the host allows (needed for resource
    limits); ``off`` relies on bwrap's pid namespace and the ``HAL_SANDBOX`` marker."""
    ro_paths: tuple[Path, ...] = ()
    """Further host paths shown read-only at the same place inside, e.g. ``/opt``."""


@functools.lru_cache(maxsize=8)
def system_args(rootfs: Path | None, ro_paths: tuple[Path, ...]) -> tuple[str, ...]:
    """The read-only system part: host /usr and curated /etc, or the whole of ``rootfs``."""
    args: list[str] = []
    if rootfs is None:
        args += ["--ro-bind", "/usr", "/usr"]
        for name in MERGED_USR:
            host = Path("/", name)
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                args += ["--ro-bind", str(host), str(host)]
        for name in ETC:
            if os.path.lexists(f"/etc/{name}"):
                args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        # /var/tmp is where some tools put bigger temp files; share /tmp's directory.
        args += ["--dir", "/var", "--symlink", "../tmp", "/var/tmp"]
    else:
        for entry in sorted(os.scandir(rootfs), key=lambda e: e.name):
            if entry.name in ROOTFS_SKIP:
                continue
            if entry.is_symlink():
                args += ["--symlink", os.readlink(entry.path), f"/{entry.name}"]
            else:
                args += ["--ro-bind", entry.path, f"/{entry.name}"]
    for path in ro_paths:
        args += ["--ro-bind-try", str(path), str(path)]
    return tuple(args)


class BwrapSandbox(HostSandbox):
    """Host directories and a cgroup; each command is a fresh bubblewrap invocation."""

    home = HOME

    def __init__(self, owner: BwrapProvider, record: SandboxRecord) -> None:
        spec = record.spec
        directory = owner.store.dir(record.id)
        # Keyed by target: a later bind of the same target wins, in bwrap as in the PathMap.
        binds = {
            hostfs.normalize(b.target, "/"): hostfs.Mount(
                hostfs.normalize(b.target, "/"), b.source, not b.read_only
            )
            for b in spec.binds
        }
        # The sandbox's own dirs, unless a bind takes their place (e.g. a session's home).
        own = [
            hostfs.Mount(target, source, writable=True)
            for target, source in (
                (WORKDIR, spec.workspace or directory / "workspace"),
                (HOME, directory / "home"),
                ("/tmp", directory / "tmp"),
            )
            if target not in binds
        ]
        # Parents before children, or a bind inside the workspace would be hidden by it.
        mounts = sorted([*own, *binds.values()], key=lambda m: m.target.count("/"))
        super().__init__(owner, record, hostfs.PathMap(mounts, cwd=WORKDIR))
        self._bwrap = owner.bwrap
        self.cgroup = owner.cgroup(record)
        """The cgroup holding every process of the sandbox (None when cgroups are off)."""
        self._procs = [] if self.cgroup is None else self.cgroup.procs_files()
        args = ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
        if spec.network == "host":
            args.append("--share-net")
        args += system_args(spec.rootfs, owner.config.ro_paths)
        args += ["--proc", "/proc", "--dev", "/dev"]
        for mount in mounts:
            args += ["--bind" if mount.writable else "--ro-bind", str(mount.source), mount.target]
        # Nothing may be left behind in the root tmpfs: every exec gets a fresh one.
        args += ["--hostname", f"hal-{record.id}", "--remount-ro", "/"]
        self._args = args

    def _argv(self, command: Command, *, new_session: bool) -> list[str]:
        cwd = self._paths.normalize(command.cwd or WORKDIR)
        # A new session keeps a command from pushing keystrokes into a terminal (TIOCSTI).
        session = ["--new-session"] if new_session else []
        bwrap = [self._bwrap, *session, *self._args, "--chdir", cwd, "--", *to_argv(command)]
        return hostexec.launcher_argv(self.id, self._procs, bwrap)

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """The host argv (launcher + bwrap) and exact env that run ``command`` inside."""
        return Launch(
            argv=self._argv(command, new_session=True),
            env=self.command_env(command, env),
            cwd=self.dir,
        )

    def attach_command(self) -> list[str]:
        """An interactive bash inside; it keeps the terminal, which job control needs."""
        shell = ArgvCommand(argv=("bash", "-i"))
        pairs = [f"{k}={v}" for k, v in self.command_env(shell, None).items()]
        return ["/usr/bin/env", "-i", *pairs, *self._argv(shell, new_session=False)]

    def oom_kills(self) -> int:
        """How many processes inside the kernel has killed for exceeding the memory limit."""
        return 0 if self.cgroup is None else self.cgroup.oom_kills()

    async def exec(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract's per-command timeout
    ) -> ExecResult:
        """Run a command to completion; an out-of-memory kill is noted on stderr."""
        limited = self.spec.resources.memory_mb is not None
        before = self.oom_kills() if limited else 0
        result = await super().exec(command, env=env, stdin=stdin, timeout=timeout)
        if limited and not result.ok and self.oom_kills() > before:
            # ExecResult has no field for it, and a bare 137 does not say why.
            note = (
                f"\nhal: killed by the sandbox memory limit ({self.spec.resources.memory_mb} MiB)\n"
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

    def _own_dirs(self, record: SandboxRecord) -> list[str]:
        """``tmp`` (outlives each exec), ``home`` and an own ``workspace`` where no bind or
        spec workspace takes their place; a reset swaps each for a fresh one."""
        return ["home", "tmp"] + (["workspace"] if record.spec.workspace is None else [])

    async def _prepare(self, record: SandboxRecord) -> SandboxRecord:
        directory = self.store.dir(record.id)
        for name in self._own_dirs(record):
            (directory / name).mkdir(exist_ok=True)
            # Like the host's /tmp: anyone writes, nobody deletes another's files.
            os.chmod(directory / name, 0o1777 if name == "tmp" else 0o755)
        return await super()._prepare(record)

    def _handle(self, record: SandboxRecord) -> BwrapSandbox:
        return BwrapSandbox(self, record)
