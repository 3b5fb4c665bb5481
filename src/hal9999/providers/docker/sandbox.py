"""The handle on one ``docker`` sandbox: commands and files, all run inside the container.

File operations are small shell programs run inside as the sandbox user, so the host never
walks a path the agent can change: a planted symlink resolves inside the container's own
view, where the host's files are not.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999.errors import CapabilityError, ExecError
from hal9999.providers import limits
from hal9999.providers.base import STDOUT_LIMIT, Command, ExecResult, Launch, StreamEvent
from hal9999.providers.docker.engine import ENV_WRAPPER, SETTLE_SCRIPT, ContainerExec
from hal9999.providers.handle import SandboxHandle, reading_file
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host import user as sandboxuser
from hal9999.pymodule import module_argv
from hal9999.spec import SandboxSpec, to_argv

if TYPE_CHECKING:
    from hal9999.providers.docker.provider import DockerProvider

WORKDIR = "/workspace"

# A failure before the data is read still drains stdin: a command that exits with its input
# unread makes Podman reset the attach, and its error message would be lost with it.
WRITE = r"""
p="$1"; d=$(dirname -- "$p")
drain() { cat > /dev/null; exit 1; }
mkdir -p -- "$d" || drain
t=$(mktemp "$d/.hal-write.XXXXXX") || drain
trap 'rm -f -- "$t"' EXIT
cat > "$t" || exit 1
chmod "$2" "$t" || exit 1
[ "$(stat -c %s -- "$t")" = "$3" ] || { echo "short write to $t" >&2; exit 1; }
mv -f -T -- "$t" "$p" || exit 1
trap - EXIT
"""
REMOVE = r"""
if [ -d "$1" ] && [ ! -L "$1" ]; then echo "$1 is a directory" >&2; exit 2; fi
rm -f -- "$1"
"""


class DockerSandbox(SandboxHandle):
    """Operations on one container."""

    hosts_daemons = True
    """A daemon one exec starts lives on in the container (PM2 can run inside)."""

    def __init__(
        self, owner: DockerProvider, sandbox_id: str, spec: SandboxSpec, uid: int, running: bool
    ) -> None:
        from hal9999.providers.docker.provider import container_name

        self._owner = owner
        self._id = sandbox_id
        self._spec = spec
        self.uid = uid
        self.running = running
        self.container = container_name(sandbox_id)
        self._exec = ContainerExec(owner.client(), self.container, f"{uid}:{uid}")

    def _identity(self) -> tuple[str, str, SandboxSpec]:
        return self._id, self._owner.name, self._spec

    @property
    def workdir(self) -> str:
        """The workspace's place inside."""
        return WORKDIR

    def path(self, target: str) -> str:
        """Binds appear at their own targets inside a container."""
        return target

    def _env(self, command: Command, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**command.env, **(env or {}), "HAL_SANDBOX": self._id}

    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a command to completion (killed at ``timeout``, or past ``stdout_limit``)."""
        code, out, err = await self._exec.run(
            to_argv(command), env=self._env(command, env), cwd=command.cwd or WORKDIR,
            stdin=stdin, timeout=timeout, stdout_limit=stdout_limit,
        )  # fmt: skip
        return ExecResult(code, out, err)

    async def exec_stream(
        self, command: Command, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run a command, yielding output as it comes and the exit status last."""
        stream = self._exec.stream(
            to_argv(command), env=self._env(command, env), cwd=command.cwd or WORKDIR
        )
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def end_processes(self) -> bool:
        """End every process a command left in the container (but its init), however it
        hid (environment cleared, a session of its own): what a finished agent left must
        not write on while its work is collected. False when they would not settle (the
        caller then restarts the container)."""
        try:
            result = await self._sh(SETTLE_SCRIPT)
        except ExecError:
            return False
        return result.ok

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """The engine CLI's ``exec`` under :mod:`.launch`: variable names in
        argv, values in its environment, handed to the command over stdin."""
        values = self._env(command, env)
        argv = [
            *module_argv("hal9999.providers.docker.launch", ",".join(values), "--"),
            *self._owner.cli_argv(), "exec", "-i", "-u", f"{self.uid}:{self.uid}",
            "-w", command.cwd or WORKDIR, "-e", f"HAL_SANDBOX={self._id}", self.container,
            "bash", "-c", ENV_WRAPPER, "hal-env", *to_argv(command),
        ]  # fmt: skip
        return Launch(argv=argv, env={"PATH": os.environ.get("PATH", ""), **values})

    async def disk_use(self) -> limits.DiskUse:
        """What the container's writable places hold now (the workspace and writable binds,
        and its volumes, /tmp and the home, where the engine keeps them on this host),
        against its disk limits. The root is read-only, so nothing else grows."""
        found = await self._owner.call("inspect", self._owner.client().api.inspect_container,
                                       self.container)  # fmt: skip
        dirs = []
        for mount in found.get("Mounts") or []:
            source = Path(str(mount.get("Source") or ""))
            if mount.get("RW", True) and source.is_absolute() and source.is_dir():
                dirs.append(Path(os.path.realpath(source)))
        resources = limits.effective(self._spec.resources)
        return await limits.use_of(list(dict.fromkeys(dirs)), resources)

    def attach_command(self) -> list[str]:
        """An interactive bash in the workspace (a terminal when the caller has one)."""
        tty = ["-t"] if os.isatty(0) else []
        return [
            *self._owner.cli_argv(), "exec", "-i", *tty, "-u", f"{self.uid}:{self.uid}",
            "-w", WORKDIR, "-e", f"HAL_SANDBOX={self._id}", self.container, "bash", "-i",
        ]  # fmt: skip

    async def _sh(self, script: str, *args: str, stdin: bytes | None = None,
                  stdout_limit: int = STDOUT_LIMIT) -> ExecResult:  # fmt: skip
        code, out, err = await self._exec.run(
            ["sh", "-c", script, "hal", *args],
            env={"HAL_SANDBOX": self._id},
            cwd="/",
            stdin=stdin,
            timeout=120,
            stdout_limit=stdout_limit,
        )
        return ExecResult(code, out, err)

    async def read_file(self, path: str) -> bytes:
        """The contents of a file."""
        # As much as a read on the host takes (hostfs.READ_LIMIT), no more.
        with reading_file(path, hostfs.READ_LIMIT):
            result = await self._sh('exec cat -- "$1"', path, stdout_limit=hostfs.READ_LIMIT)
        if not result.ok:
            raise ExecError(f"cannot read {path}: {_reason(result)}")
        return result.stdout

    async def write_file_atomic(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write by temp file and rename inside the container (a planted link is replaced)."""
        result = await self._sh(WRITE, path, f"{mode:o}", str(len(data)), stdin=data)
        if not result.ok:
            raise ExecError(f"cannot write {path}: {_reason(result)}")

    async def exists(self, path: str) -> bool:
        """Whether the path exists (a dangling link counts)."""
        return (await self._sh('test -e "$1" || test -L "$1"', path)).ok

    async def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        """Create a directory and its parents."""
        result = await self._sh('mkdir -p -m "$2" -- "$1"', path, f"{mode:o}")
        if not result.ok:
            raise ExecError(f"cannot create {path}: {_reason(result)}")

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory tree with ``recursive``."""
        script = 'rm -rf -- "$1"' if recursive else REMOVE
        result = await self._sh(script, path)
        if not result.ok:
            raise ExecError(f"cannot remove {path}: {_reason(result)}")

    async def adopt(self, target: str) -> None:
        """Hand host-made files under the writable bind at ``target`` to the sandbox's uid."""
        if not sandboxuser.privileged():
            return
        sources = {WORKDIR: self.spec.workspace}
        sources |= {b.target.rstrip("/"): b.source for b in self.spec.binds if not b.read_only}
        source = sources.get(target.rstrip("/") or "/")
        if source is None:
            raise CapabilityError(f"{target} is not a writable bind of sandbox {self.id}")
        await asyncio.to_thread(sandboxuser.adopt, source, self.uid)

    async def _destroy_self(self) -> None:
        await self._owner.destroy(self.id)


def _reason(result: ExecResult) -> str:
    # Podman may append its own line (an attach reset when a command exits before reading
    # its stdin), so the command's reason is looked for in every line.
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    for line in lines:
        if "Read-only file system" in line:
            return f"read-only mount ({line})"
        if "is a directory" in line.lower():
            return f"is a directory ({line})"
    return lines[0] if lines else f"exit {result.exit_code}"
