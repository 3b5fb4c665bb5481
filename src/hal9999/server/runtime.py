"""Where a running daemon can be found: its token, socket, port and pid, under ``HAL_HOME``.

::

    <home>/token            the bearer token (random, mode 600), kept across restarts
    <home>/run/serve.json   pid, socket path, TCP port, start time of the running daemon
    <home>/run/serve.lock   held (flock) by the running daemon: one per home
    <home>/run/serve.log    the detached daemon's log
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from hal9999 import plainjson
from hal9999.errors import HalError, HomeError
from hal9999.home import HalPaths
from hal9999.workdir import pure_path

TYPE_CHECKING = False  # typing, pathlib: hal9999.lighttyping says why
if TYPE_CHECKING:
    from pathlib import Path
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
    tls_port: int | None = None
    """The port of ``--listen`` (``HAL_LISTEN``), the system's pick for port 0; None without."""


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
        """The unix socket: under ``run/``, or this user's private directory in the temp dir
        when that path is too long (HomeError if someone else holds that directory)."""
        path = self.paths.run / "hal.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        import hashlib  # here, as tempfile and secrets below: every client imports this
        import tempfile  # module, and those three cost it ~8 ms of start-up (issue 16)
        from pathlib import Path

        from hal9999.unixsock import private_dir

        digest = hashlib.sha256(str(self.paths.home).encode()).hexdigest()[:16]
        short = Path(tempfile.gettempdir()) / f"hal9999-{os.getuid()}"
        try:
            if len(str(short / f"{digest}.sock")) > _MAX_SOCKET_PATH:
                raise OSError(f"so is its place in the temp dir, {short}")
            return private_dir(short) / f"{digest}.sock"
        except OSError as exc:
            raise HomeError(
                f"the daemon's socket {path} is {len(str(path))} bytes, past the"
                f" {_MAX_SOCKET_PATH} a unix socket's path may take here, and {exc}",
                hint=f"use a shorter HAL_HOME, or remove {short} if it is not yours",
            ) from exc

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
        return _read_token(str(self.token_file))

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
        import json  # here: only the daemon writes it

        tmp.write_text(json.dumps(info._asdict()))
        os.replace(tmp, self.info_file)

    def read_info(self) -> DaemonInfo | None:
        """The recorded daemon, if any (it may have died since)."""
        return _read_info(str(self.info_file))

    def running(self) -> DaemonInfo | None:
        """The daemon, if one holds the lock now."""
        return _running(str(self.info_file), str(self.lock_file))

    def clear(self, info: DaemonInfo) -> None:
        """Remove the socket and info file of a daemon that is stopping."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info.socket)
        with contextlib.suppress(FileNotFoundError):
            self.info_file.unlink()


def find_running(home: str) -> tuple[DaemonInfo, str] | None:
    """The daemon running for ``home`` and its token, as :meth:`DaemonFiles.running` and
    :meth:`DaemonFiles.read_token` find them; paths as strings: the thin ``hal run`` imports
    no :mod:`pathlib` (issue 16)."""
    run = pure_path(home, "run")
    info = _running(pure_path(run, "serve.json"), pure_path(run, "serve.lock"))
    token = _read_token(pure_path(home, "token"))
    return None if info is None or token is None else (info, token)


def _read_token(token_file: str) -> str | None:
    try:
        with open(token_file) as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(token_file, exc) from exc


def _read_info(info_file: str) -> DaemonInfo | None:
    try:
        with open(info_file) as fh:
            return DaemonInfo(**plainjson.loads(fh.read()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    except OSError as exc:  # no permission, a directory in its place
        raise _unreadable(info_file, exc) from exc


def _unreadable(path: str, exc: OSError) -> HomeError:
    """The one-line error for a file of the daemon's that hal cannot read."""
    return HomeError(
        f"cannot read {path}: {exc.strerror or exc}",
        hint="give hal back its data directory (HAL_HOME) readable and writable, or set"
        " HAL_HOME to one that is",
    )


def _running(info_file: str, lock_file: str) -> DaemonInfo | None:
    info = _read_info(info_file)
    if info is None or not _exists(info.socket):
        return None
    try:
        handle = open(lock_file, "a")  # closed by the with below
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(lock_file, exc) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return info  # held: the daemon is alive
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _exists(path: str) -> bool:
    # pathlib.Path.exists: False for a missing path (or one through a file, a loop, a bad
    # name); any other error raised.
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            raise
        return False
    except ValueError:
        return False
    return True
