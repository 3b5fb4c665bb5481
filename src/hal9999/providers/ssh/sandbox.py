"""A sandbox on an ssh host: commands over the host's shared connection, files in a mirror.

Paths: with ``bwrap`` isolation commands see the same paths as locally (``/workspace``,
``/home/hal``, bind targets); without it they work on the mirror's directories directly and
:meth:`SshSandbox.path` says where. Reads and writes run as commands inside (so a link the
agent planted resolves inside its own view, never on the hal host). After every command
and file change the writable directories come back to the hal host (:mod:`.mirror`); the
read-only ones (the prompt) go out before every command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from hal9999.envvars import env_argv
from hal9999.errors import ExecError, HalError
from hal9999.providers import limits
from hal9999.providers.base import Command, Launch, StreamEvent
from hal9999.providers.handle import SandboxHandle
from hal9999.providers.host.exec import EXEC_MARKER_VAR, MARKER_VAR
from hal9999.providers.remote.files import MirrorFiles
from hal9999.providers.ssh import channel, mirror, remote, session
from hal9999.providers.ssh.connections import ConnectionPool
from hal9999.providers.ssh.records import MountRecord, SshRecord, SshRecords
from hal9999.spec import ArgvCommand, SandboxSpec, display, to_argv

logger = logging.getLogger(__name__)
OPEN_ATTEMPTS = 6
"""Tries to open a command's channel (see :meth:`SshSandbox._events`)."""
WORKDIR = "/workspace"


class SshSandbox(MirrorFiles, SandboxHandle):
    """Operations on one sandbox of an ssh host."""

    _record: SshRecord

    def __init__(
        self,
        record: SshRecord,
        pool: ConnectionPool,
        records: SshRecords,
        destroy: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._destroy = destroy
        self._record = record
        self._pool = pool
        self._records = records
        self._mounts = remote.Mounts(record.root, [(m.target, m.remote, m.writable)
                                                   for m in record.mounts])  # fmt: skip
        self._sync = asyncio.Lock()

    # -- identity ---------------------------------------------------------------------------
    def _identity(self) -> tuple[str, str, SandboxSpec]:
        return self._record.id, self._record.provider, self._record.spec

    @property
    def record(self) -> SshRecord:
        """The provider's record."""
        return self._record

    @property
    def isolated(self) -> bool:
        """Whether commands run inside bubblewrap."""
        return self._record.isolation == "bwrap"

    @property
    def hosts_daemons(self) -> bool:
        """Whether a daemon one command starts lives on (on a bare host, not inside
        bwrap's pid namespace): PM2 can then run on the host itself."""
        return not self.isolated

    @property
    def workdir(self) -> str:
        """Where the workspace is seen by commands."""
        return self.path(WORKDIR)

    def path(self, target: str) -> str:
        """Where the mount ``target`` is seen by commands (the mirror's dir when bare)."""
        if self.isolated:
            return target
        found = self._mounts.remote(target)
        return found if found is not None else self._mounts.translate(target)

    def _remote_path(self, path: str) -> str:
        # The path as the command will see it: bare commands need the mirror's path.
        if self.isolated:
            return path
        return self._mounts.mirrored(path)

    # -- commands ---------------------------------------------------------------------------

    def remote_argv(self, command: Command, *, tty: bool = False) -> list[str]:
        """The argv the wrapper execs on the remote host (bwrap around it when isolated),
        under ``prlimit``: no single file past the disk limit (the total is watched through
        :meth:`disk_use`), as the local bwrap provider does."""
        cwd = self._remote_path(command.cwd or self.workdir)
        argv = to_argv(command)
        if not self.isolated:
            inner = ["sh", "-c", remote.BARE_REAPED, "hal-run", remote.reaper_source(), cwd, *argv]
        else:
            network = self.spec.network == "host"
            root = self._record.root if self._record.seccomp else None
            inner = remote.bwrap_argv(self._record.bwrap, self._mounts, cwd=cwd,
                                      network=network, tty=tty, argv=argv, root=root,
                                      user_ids=self._record.user_ids)  # fmt: skip
        disk_mb = limits.effective(self.spec.resources).disk_mb
        return ["prlimit", f"--fsize={disk_mb << 20}", "--", *inner] if disk_mb else inner

    async def disk_use(self) -> limits.DiskUse:
        """What the mirror's writable directories hold on the host now, against the
        sandbox's limits: bytes (``du``) and names (``find``, as :func:`limits.use_of`
        counts them), in one remote command."""
        dirs = [mount.remote for mount in self._record.mounts if mount.writable]
        resources = limits.effective(self.spec.resources)
        disk_mb, files = resources.disk_mb, resources.disk_files
        conn = await self._pool.get(self._record.host)
        # du and find exit 1 past an unreadable part (a 000 dir): the count of the rest stands.
        _, out, _ = await channel.run(
            conn, remote.plain(["sh", "-c", _DISK_USE, "hal-disk", *dirs]),
            what="measuring disk use",
        )  # fmt: skip
        used, used_files = _disk_figures(out)
        if not used_files and dirs:  # find lists each dir itself: none means it did not run
            used_files = None
        for figure, limit, name in ((used, disk_mb, "bytes"), (used_files, files, "files")):
            if figure is None and limit:
                # A limit hal cannot measure is not enforced: said, never taken as none.
                raise ExecError(
                    f"could not measure the {name} sandbox {self.id} holds on "
                    f"{self._record.host} (its limit cannot be enforced)",
                    hint="the host needs GNU du and find (coreutils, findutils)",
                )
        return limits.DiskUse(used or 0, disk_mb << 20 if disk_mb else None, used_files or 0,
                              files or None)  # fmt: skip

    async def _events(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes, token: str
    ) -> AsyncGenerator[StreamEvent, None]:
        full = self.command_env(command, env) | {EXEC_MARKER_VAR: token}
        line = remote.env_line(full)
        finished = False
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            conn = await self._pool.get(self._record.host)
            try:
                async with contextlib.aclosing(channel.stream(
                    conn, remote.wrapped(self.remote_argv(command)), stdin=line + stdin,
                    what=display(command), retryable=True,
                )) as events:  # fmt: skip
                    async for event in events:
                        finished = event.kind == "exit"
                        yield event
                return
            except channel.NotStarted as exc:
                # Nothing ran, so it is safe to try again: on a new connection when this one
                # was found closed; after a pause when sshd refused the channel (it frees a
                # session slot a little after the client has seen the channel close).
                self._pool.forget(self._record.host)
                if attempt == OPEN_ATTEMPTS:
                    raise exc.error from exc
                await asyncio.sleep(0.05 * attempt)
            except ExecError:
                self._pool.forget(self._record.host)
                raise
            finally:
                # A command that ended by itself took its namespace along (bwrap's pid 1),
                # or all it left (the reaper of a bare host with python3); one closed early,
                # timed out or cut off is hunted down by its marker.
                if not finished or not (self.isolated or self._record.reaper):
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._kill(EXEC_MARKER_VAR, token))

    async def end_processes(self) -> bool:
        """End every process of the sandbox on its host and all under them, however they
        hid (see :mod:`.reaper`): what a finished agent left (PM2 inside, a daemon a
        command's end missed) must not write on while its work is collected. False when
        they would not end or the host cannot be reached (the caller then stops and starts
        the sandbox)."""
        try:
            conn = await self._pool.get(self._record.host)
            return await channel.kill_marked(conn, MARKER_VAR, self.id)
        except HalError as exc:
            logger.warning("sandbox %s: ending its processes: %s", self.id, exc.one_line())
            return False

    async def _kill(self, var: str, value: str) -> None:
        conn = await self._pool.get(self._record.host)
        await channel.kill_marked(conn, var, value)

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """The relay (:mod:`.relay`) running ``command`` here: it reaches the host itself,
        so the run outlives this process; values ride in its environment, names in argv."""
        full = self.command_env(command, env)
        return remote.relay_launch("hal9999.providers.ssh.relay", self._records.root, self.id,
                                   command, full, "--session")  # fmt: skip

    def attach_command(self) -> list[str]:
        """An interactive bash inside, through the relay (a terminal when the caller has one)."""
        launch = self.launch(ArgvCommand(argv=("bash", "-i")))
        argv = [arg for arg in launch.argv if arg != "--session"]
        return env_argv(launch.env, argv)

    def session_attach_command(self) -> list[str]:
        """The system ``ssh`` command line that opens the live run's tmux session on the
        host (see :mod:`.session`): what ``hal task attach`` runs for this sandbox."""
        return session.attach_argv(self._record.host, self._record.root, self._records.root)

    # -- files (as commands inside: links resolve in the sandbox's own view) -----------------
    def _target(self, path: str, *, write: bool = False) -> str:
        # Without bwrap nothing enforces a read-only bind inside; hal's own writes refuse it
        # (and what a command changes there is never pulled back).
        if write and not self.isolated and not self._mounts.writable(path):
            raise ExecError(f"cannot write {path}: it is on a read-only mount")
        return self._remote_path(path)

    # -- the mirror -------------------------------------------------------------------------
    async def _push_one(self, mount: MountRecord) -> None:
        if mount.host is None:
            return
        conn = await self._pool.get(self._record.host)
        host = mirror.host_dir(mount.host)
        argv = await asyncio.to_thread(mirror.push_argv, mount.remote, host)
        stream = mirror.pack_stream(host)
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            what = f"pushing {mount.target} to {self._record.host.name}"
            code, err = await channel.run_fed(conn, remote.plain(argv), chunks, what=what)
        if code != 0:
            raise ExecError(f"cannot send {mount.target} to the ssh host: {err.decode()[-300:]}")

    async def _pull_one(self, mount: MountRecord) -> None:
        assert mount.host is not None
        conn = await self._pool.get(self._record.host)
        command = remote.plain(["sh", "-c", mirror.PULL, "hal-pull", mount.remote])
        stream = channel.stream(conn, command, what=f"pulling {mount.target}")
        disk_mb = limits.effective(self.spec.resources).disk_mb
        await mirror.pull_into(stream, mount.target, mirror.host_dir(mount.host), disk_mb)

    async def _destroy_self(self) -> None:
        if self._destroy is not None:
            await self._destroy(self.id)
            return
        from hal9999.providers.ssh.provider import destroy_record

        await destroy_record(self._records, self._pool, self.id)


_DISK_USE = (
    # As root of a user namespace of the ssh user's own where the host allows one: that root
    # reads the 000 directories the agent made (it owns them), and nothing the user could not.
    'u=; unshare --user --map-root-user true 2>/dev/null && u="unshare --user --map-root-user --"; '
    '$u du -s -x -c -B1 -- "$@" 2>/dev/null | tail -n 1 | { read -r n _ && echo "bytes $n"; }; '
    'n=$($u find "$@" -xdev -printf x 2>/dev/null | wc -c) && echo "files $n"'
)
"""The remote half of :meth:`SshSandbox.disk_use`: ``bytes N`` then ``files N`` (each line
missing when its walk gave no figure); ``find`` prints one ``x`` per name, so no name the
agent chose reaches the output. Neither walk follows a link; the paths are the record's."""


def _disk_figures(out: bytes) -> tuple[int | None, int | None]:
    """``bytes`` and ``files`` from :data:`_DISK_USE`'s output; None for a figure absent or
    not a plain number (read defensively: the host is not hal's)."""
    figures: dict[str, int] = {}
    for line in out.decode(errors="replace").splitlines()[:2]:
        name, _, value = line.partition(" ")
        if name in ("bytes", "files") and value.isascii() and value.isdigit():
            figures.setdefault(name, int(value))
    return figures.get("bytes"), figures.get("files")
