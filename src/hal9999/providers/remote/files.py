"""File operations of a sandbox whose directories are a mirror of the session's on the hal
host (the ``ssh`` and ``kubernetes`` providers): each is a small shell step run inside, as a
command, so links resolve in the sandbox's own view; a write is brought back to the host at
once, and what the host makes in a mount goes out (:meth:`MirrorFiles.adopt`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from hal9999.errors import ExecError
from hal9999.providers.base import STDOUT_LIMIT, Command, ExecResult, StreamEvent
from hal9999.providers.handle import collect, reading_file
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host.exec import MARKER_VAR
from hal9999.spec import ArgvCommand, display

HOME = "/home/hal"
"""The home directory commands see."""

WRITE_ATOMIC = (
    'set -e; d=$(dirname -- "$1"); mkdir -p -- "$d"; t=$(mktemp "$d/.hal.XXXXXX"); '
    'trap \'rm -f -- "$t"\' EXIT; cat > "$t"; chmod "$2" "$t"; mv -f -- "$t" "$1"; '
    'trap - EXIT; wc -c < "$1"'
)
"""Inside: stdin to ``$1`` through a temp file and a rename (a link is replaced, never
followed), mode ``$2``; prints the size written."""


def reason(result: ExecResult) -> str:
    """Why a file step failed, in one line."""
    text = result.stderr.decode("utf-8", "replace").strip()
    if "Read-only file system" in text:
        text += " (read-only)"
    return text or f"exit {result.exit_code}"


class MirrorFiles:
    """The file and command half of a mirrored sandbox: a command runs with the read-only
    directories sent out first and the writable ones brought back after; the sandbox
    provides the steps named below."""

    _record: Any
    """The provider's record (its ``mounts``)."""
    _records: Any
    """The provider's records (the sandbox's current state)."""
    _sync: asyncio.Lock
    """Held while the writable directories come back, one pull at a time."""

    @property
    def workdir(self) -> str:
        """Where the workspace is seen by commands."""
        raise NotImplementedError

    def path(self, target: str) -> str:
        """Where the bind ``target`` (an absolute sandbox path) is seen by commands."""
        raise NotImplementedError

    def _extra_env(self) -> dict[str, str]:
        """What the provider adds to the base environment."""
        return {}

    def command_env(self, command: Command, env: Mapping[str, str] | None) -> dict[str, str]:
        """Base, spec, command and exec-time environment, plus the sandbox marker."""
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.path(HOME),
                "LANG": "C.UTF-8"} | self._extra_env()  # fmt: skip
        merged: dict[str, str] = base | self._record.spec.env | command.env | dict(env or {})
        merged[MARKER_VAR] = self._record.id
        return merged

    def _require_running(self) -> None:
        sandbox = self._record.id
        state = self._records.load(sandbox).state
        if state != "running":
            raise ExecError(
                f"sandbox {sandbox} is {state}", hint="start the sandbox before running commands"
            )

    def _events(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes, token: str
    ) -> AsyncGenerator[StreamEvent, None]:
        """The command's events, its processes marked with ``token``."""
        raise NotImplementedError

    async def _run(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int = STDOUT_LIMIT,
    ) -> ExecResult:  # fmt: skip
        events = self._events(command, env, stdin, secrets.token_hex(8))
        return await collect(events, time_limit=timeout, what=display(command),
                             stdout_limit=stdout_limit)  # fmt: skip

    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a command to completion, then bring its changes back to the hal host."""
        self._require_running()
        await self.push(writable=False)
        try:
            return await self._run(command, env, stdin or b"", timeout, stdout_limit)
        finally:
            with contextlib.suppress(ExecError):
                await self.pull()

    async def exec_stream(
        self, command: Command, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run a command, yielding output as it comes and the exit status last."""
        self._require_running()
        await self.push(writable=False)
        try:
            events = self._events(command, env, b"", secrets.token_hex(8))
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        finally:
            with contextlib.suppress(ExecError):
                await asyncio.shield(self.pull())

    def _target(self, path: str, *, write: bool = False) -> str:
        raise NotImplementedError

    async def pull(self) -> None:
        """Bring every writable directory with a host counterpart back to the hal host."""
        async with self._sync:
            for mount in self._record.mounts:
                if mount.host is not None and mount.writable:
                    await self._pull_one(mount)

    async def _pull_one(self, mount: Any) -> None:
        raise NotImplementedError

    async def _push_one(self, mount: Any) -> None:
        raise NotImplementedError

    async def _inside(self, script: str, *args: str, stdin: bytes = b"",
                      stdout_limit: int = STDOUT_LIMIT) -> ExecResult:  # fmt: skip
        command = ArgvCommand(argv=("sh", "-c", script, "hal-file", *args), cwd=self.workdir)
        return await self._run(command, None, stdin, 120, stdout_limit)

    async def read_file(self, path: str) -> bytes:
        """The contents of a file."""
        self._require_running()
        # As much as a read on the host takes (hostfs.READ_LIMIT), no more.
        with reading_file(path, hostfs.READ_LIMIT):
            result = await self._inside('exec cat -- "$1"', self._target(path),
                                        stdout_limit=hostfs.READ_LIMIT)  # fmt: skip
        if not result.ok:
            raise ExecError(f"cannot read {path}: {reason(result)}")
        return result.stdout

    async def write_file_atomic(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write a file atomically (temp + rename, replacing a link rather than following
        it), create parents, verify its size, then bring it back to the hal host."""
        self._require_running()
        result = await self._inside(WRITE_ATOMIC, self._target(path, write=True), f"{mode:o}",
                                    stdin=data)  # fmt: skip
        if not result.ok:
            raise ExecError(f"cannot write {path}: {reason(result)}")
        if result.stdout.strip() != str(len(data)).encode():
            raise ExecError(f"wrote {path} but read back a different size")
        await self.pull()

    async def exists(self, path: str) -> bool:
        """Whether the path exists."""
        self._require_running()
        return (await self._inside('test -e "$1" || test -L "$1"', self._target(path))).ok

    async def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        """Create a directory and its parents."""
        self._require_running()
        where = self._target(path, write=True)
        result = await self._inside('mkdir -p -m "$2" -- "$1"', where, f"{mode:o}")
        if not result.ok:
            raise ExecError(f"cannot create directory {path}: {reason(result)}")
        await self.pull()

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory tree with ``recursive``."""
        self._require_running()
        script = 'rm -rf -- "$1"' if recursive else 'rm -f -- "$1"'
        result = await self._inside(script, self._target(path, write=True))
        if not result.ok:
            raise ExecError(f"cannot remove {path}: {reason(result)}")
        await self.pull()

    async def adopt(self, target: str) -> None:
        """What the hal host just made in the mount at ``target`` (a fresh clone) goes out."""
        for mount in self._record.mounts:
            if target in (mount.target, mount.remote):
                await self._push_one(mount)

    async def push(self, *, writable: bool = True) -> None:
        """Send host directories out: the read-only ones, and with ``writable`` all."""
        for mount in self._record.mounts:
            if mount.host is not None and (writable or not mount.writable):
                await self._push_one(mount)
