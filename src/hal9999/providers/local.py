"""The ``local`` provider: commands run straight on the host, with no isolation at all.

For trusted work and for machines without bubblewrap. A sandbox is a private directory
(``<state_dir>/<id>/root``) plus the spec's workspace; paths inside are host paths, except
that a bind's target is reached at its host source (:meth:`LocalSandbox.path`). Processes
are tracked by a cgroup when the host allows one, so stop and destroy leave no orphans.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hal9999.envvars import env_argv
from hal9999.providers.base import Capabilities, Command, Launch
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host.sandbox import HostProvider, HostSandbox, SandboxRecord
from hal9999.spec import ArgvCommand, to_argv

SANDBOX_HOME = "/home/hal"
"""A bind with this target becomes the commands' HOME."""


class LocalConfig(BaseModel):
    """Settings of the ``local`` provider."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local"] = "local"
    """Provider kind."""
    cgroup: Literal["auto", "off"] = "auto"
    """``auto`` tracks processes in a cgroup when the host allows; ``off`` uses only the
    ``HAL_SANDBOX`` environment marker (a process that clears its environment escapes)."""


class LocalSandbox(HostSandbox):
    """A directory on the host; commands run as host processes in their own session."""

    def __init__(self, owner: LocalProvider, record: SandboxRecord) -> None:
        spec = record.spec
        root = owner.store.dir(record.id) / "root"
        workdir = str(spec.workspace or root / "workspace")
        mounts = [hostfs.Mount("/", Path("/"), writable=True)]
        for bind in spec.binds:
            # Both names of a read-only bind are read-only to file operations.
            mounts.append(hostfs.Mount(bind.target, bind.source, not bind.read_only))
            mounts.append(hostfs.Mount(str(bind.source), bind.source, not bind.read_only))
        super().__init__(owner, record, hostfs.PathMap(mounts, cwd=workdir))
        homes = [b.source for b in spec.binds if b.target.rstrip("/") == SANDBOX_HOME]
        self.home = str(homes[-1] if homes else root)
        cgroup = owner.cgroup(record)
        self._procs = [] if cgroup is None else cgroup.join_files()

    def path(self, target: str) -> str:
        """Where ``target`` is seen by commands: a bind target maps to its host source."""
        for bind in sorted(self.spec.binds, key=lambda b: len(b.target), reverse=True):
            root = hostfs.normalize(bind.target, "/")
            normal = hostfs.normalize(target, self.workdir)
            if normal == root or normal.startswith(root + "/"):
                return str(bind.source) + normal[len(root) :]
        return target

    def base_env(self) -> dict[str, str]:
        """The host's PATH (agents live where the user installed them), LANG, HOME, TERM."""
        base = super().base_env()
        base["PATH"] = os.environ.get("PATH", base["PATH"])
        return base

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """A host command line that runs ``command`` inside."""
        cwd = self.path(command.cwd) if command.cwd else self.workdir
        return Launch(
            argv=hostexec.launcher_argv(self.id, self._procs, to_argv(command)),
            env=self.command_env(command, env),
            cwd=Path(hostfs.normalize(cwd, self.workdir)),
        )

    def attach_command(self) -> list[str]:
        """An interactive bash in the workdir, with the sandbox environment."""
        env = self.command_env(ArgvCommand(argv=("bash",)), None)
        shell = hostexec.launcher_argv(self.id, self._procs, ["bash", "-i"])
        return env_argv(env, shell, cwd=self.workdir)


class LocalProvider(HostProvider):
    """Runs commands on the host: no isolation, host network only, no resource limits."""

    name = "local"
    capabilities = Capabilities(
        isolation="none", network_modes=frozenset({"host"}), host_launch=True
    )
    config_model = LocalConfig

    def __init__(self, *, state_dir: Path, config: LocalConfig | None = None) -> None:
        self.config = config or LocalConfig()
        super().__init__(state_dir=state_dir, cgroup=self.config.cgroup)

    async def _prepare(self, record: SandboxRecord) -> SandboxRecord:
        root = self.store.dir(record.id) / "root"
        (root / "workspace" if record.spec.workspace is None else root).mkdir(
            parents=True, exist_ok=True
        )
        return await super()._prepare(record)

    def _handle(self, record: SandboxRecord) -> LocalSandbox:
        return LocalSandbox(self, record)
