"""Where a running daemon can be found: its token, socket, port and pid, under ``HAL_HOME``.

::

    <home>/token            the bearer token (random, mode 600), kept across restarts
    <home>/run/serve.json   pid, socket path, TCP port, start time of the running daemon
    <home>/run/serve.lock   held (flock) by the running daemon: one per home
    <home>/run/serve.log    the detached daemon's log
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from hal9999.errors import HalError
from hal9999.home import HalPaths

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from typing import IO, NamedTuple
else:
    from hal9999.lighttyping import NamedTuple

_MAX_SOCKET_PATH = 100
"""Unix socket paths must fit in 108 bytes; longer homes get a socket under the temp dir."""


class DaemonInfo(NamedTuple):
    """What ``serve.json`` holds. (A ``NamedTuple``: see :class:`~hal9999.home.HalPaths`.)"""

    pid: int
    socket: str
    port: int
    started_at: float


class DaemonFiles:
    """The daemon's files under one hal home."""

    def __init__(self, home: Path) -> None:
        self.paths = HalPaths(home)

    @property
    def token_file(self) -> Path:
        """The bearer token."""
        return self.paths.home / "token"

    @property
    def info_file(self) -> Path:
        """Where the running daemon says where it listens."""
        return self.paths.run / "serve.json"

    @property
    def lock_file(self) -> Path:
        """Held by the running daemon."""
        return self.paths.run / "serve.lock"

    @property
    def log_file(self) -> Path:
        """The detached daemon's output."""
        return self.paths.run / "serve.log"

    def socket_path(self) -> Path:
        """The unix socket: under ``run/``, or the temp dir when that path is too long."""
        path = self.paths.run / "hal.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        import hashlib  # here, as tempfile and secrets below: every client imports this
        import tempfile  # module, and those three cost it ~8 ms of start-up (issue 16)

        digest = hashlib.sha256(str(self.paths.home).encode()).hexdigest()[:16]
        short = Path(tempfile.gettempdir()) / f"hal9999-{os.getuid()}"
        short.mkdir(mode=0o700, exist_ok=True)
        return short / f"{digest}.sock"

    def ensure_token(self) -> str:
        """The token, created (random, mode 600, atomically) when missing."""
        self.paths.ensure()
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            pass
        import secrets

        token = secrets.token_urlsafe(32)
        tmp = self.token_file.with_name(f".token.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        try:
            os.link(tmp, self.token_file)  # fails if another process created it first
        except FileExistsError:
            token = self.token_file.read_text().strip()
        finally:
            tmp.unlink()
        return token

    def read_token(self) -> str | None:
        """The token, if there is one."""
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def lock(self) -> IO[str]:
        """Take the one-daemon-per-home lock; raises if another daemon holds it."""
        self.paths.ensure()
        handle = self.lock_file.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            running = self.read_info()
            pid = f" (pid {running.pid})" if running else ""
            raise HalError(
                f"a hal daemon is already running for {self.paths.home}{pid}",
                hint="see `hal status`",
            ) from None
        return handle

    def write_info(self, info: DaemonInfo) -> None:
        """Record where the daemon listens (atomically)."""
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info._asdict()))
        os.replace(tmp, self.info_file)

    def read_info(self) -> DaemonInfo | None:
        """The recorded daemon, if any (it may have died since)."""
        try:
            return DaemonInfo(**json.loads(self.info_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def running(self) -> DaemonInfo | None:
        """The daemon, if one holds the lock now."""
        info = self.read_info()
        if info is None or not Path(info.socket).exists():
            return None
        try:
            handle = self.lock_file.open("a")
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return info  # held: the daemon is alive
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    def clear(self, info: DaemonInfo) -> None:
        """Remove the socket and info file of a daemon that is stopping."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info.socket)
        with contextlib.suppress(FileNotFoundError):
            self.info_file.unlink()
