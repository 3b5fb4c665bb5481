"""Where a running daemon can be found: its token, socket, port and pid, under ``HAL_HOME``.

::

    <home>/token            the bearer token (random, mode 600), kept across restarts
    <home>/run/serve.json   pid, socket path, TCP port, start time of the running daemon
    <home>/run/serve.lock   held (flock) by the running daemon: one per home
    <home>/run/serve.log    the detached daemon's log
    <home>/run/serve.port   the TCP port the last daemon had: the next takes it when free
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
    def port_file(self) -> Path:
        """The last daemon's TCP port (kept when it stops: the dashboard's address)."""
        return self.paths.run / "serve.port"

    def last_port(self) -> int | None:
        """The TCP port the last daemon had, if one is recorded (and is a port)."""
        try:
            text = self.port_file.read_text().strip()
        except OSError:  # none yet, or unreadable: a free port will do
            return None
        return int(text) if text.isdigit() and 0 < int(text) < 65536 else None

    def remember_port(self, port: int) -> None:
        """Record the daemon's TCP port for the next start (atomically)."""
        from hal9999 import fs

        fs.write_text(self.port_file, f"{port}\n", mode=0o600, durable=False)

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
        import tempfile  # module, and those three are dear at start-up
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
        from hal9999 import fs  # here: only the daemon writes it

        # Not durable: a crash ends the daemon it names, and the next writes it anew.
        fs.write_json(self.info_file, info._asdict(), mode=None, durable=False)

    def read_info(self) -> DaemonInfo | None:
        """The recorded daemon, if any (it may have died since)."""
        return _read_info(str(self.info_file))

    def running(self) -> DaemonInfo | None:
        """The daemon, if one holds the lock now (HomeError when it does and its info file
        or socket is missing or garbled: it runs, and cannot be reached)."""
        return _running(str(self.info_file), str(self.lock_file))

    def holder(self) -> int | None:
        """The pid of the process holding the lock (the daemon, whatever became of its other
        files), None when nobody holds it."""
        return _holder(str(self.lock_file))

    def clear(self, info: DaemonInfo) -> None:
        """Remove the socket and info file of a daemon that is stopping."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info.socket)
        with contextlib.suppress(FileNotFoundError):
            self.info_file.unlink()


def find_running(home: str) -> tuple[DaemonInfo, str] | None:
    """The daemon running for ``home`` and its token, as :meth:`DaemonFiles.running` and
    :meth:`DaemonFiles.read_token` find them; paths as strings: the thin ``hal run`` imports
    no :mod:`pathlib`. A running daemon whose token file is gone is a HomeError: a caller
    would otherwise take it for no daemon, and run a task in-process beside it."""
    run = pure_path(home, "run")
    info = _running(pure_path(run, "serve.json"), pure_path(run, "serve.lock"))
    if info is None:
        return None
    token_file = pure_path(home, "token")
    token = _read_token(token_file)
    if token is None:
        raise HomeError(
            f"hal serve is running (pid {info.pid}) but its token file {token_file} is "
            "missing or empty",
            hint=_RESTART,
        )
    return info, token


_RESTART = (
    "restart it to write a new one: `hal serve --stop`, then `hal serve --detach` (running "
    "agents keep running)"
)
_BROKEN_WAIT_S = 3.0
"""How long a daemon that holds its lock may lack its info file or socket before that is an
error: a daemon starts with the lock and writes them next, and stops removing them first."""


def _read_token(token_file: str) -> str | None:
    try:
        with open(token_file) as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(token_file, exc) from exc


def _read_info(info_file: str) -> DaemonInfo | None:
    return _parse_info(info_file)[0]


def _parse_info(info_file: str) -> tuple[DaemonInfo | None, str]:
    """The recorded daemon, or None and what is wrong with the file ("is missing", "is
    empty", "is not hal's JSON")."""
    try:
        with open(info_file, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, "is missing"
    except OSError as exc:  # no permission, a directory in its place
        raise _unreadable(info_file, exc) from exc
    if not data.strip():
        return None, "is empty"
    try:
        fields = plainjson.loads(data)
        info = DaemonInfo(**fields)
        # Fields of the wrong type would fail later, in a connect or a link's port.
        if not (type(info.pid) is int and type(info.socket) is str and type(info.port) is int):
            raise TypeError("wrong field types")
    except (ValueError, TypeError, SystemError, RecursionError):
        return None, "is not hal's JSON"
    return info, ""


def _unreadable(path: str, exc: OSError) -> HomeError:
    """The one-line error for a file of the daemon's that hal cannot read."""
    return HomeError(
        f"cannot read {path}: {exc.strerror or exc}",
        hint="give hal back its data directory (HAL_HOME) readable and writable, or set"
        " HAL_HOME to one that is",
    )


def _running(info_file: str, lock_file: str) -> DaemonInfo | None:
    """The daemon holding ``lock_file``, as its ``info_file`` records it; None when nobody
    holds the lock (an info file left by a daemon killed -9 is stale, whatever it holds).
    The lock decides, not the info file: a live daemon whose info file or socket is missing
    or garbled is a HomeError naming the file, once a start or stop in progress had the
    time to write or remove them."""
    deadline = 0.0
    while True:
        info, wrong = _parse_info(info_file) if _held(lock_file) else (None, "")
        if info is not None and _exists(info.socket):
            return info
        if not wrong and info is None:
            return None  # nobody holds the lock
        if wrong in ("is empty", "is not hal's JSON"):
            break  # written atomically: never seen so in passing
        import time  # only here: a daemon starting or stopping

        deadline = deadline or time.monotonic() + _BROKEN_WAIT_S
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)  # as often as `hal serve --detach` looks for a starting daemon
    holder = _holder(lock_file)
    what = f"{info_file} {wrong}" if info is None else f"its socket {info.socket} is gone"
    running = f"hal serve is running{f' (pid {holder})' if holder else ''}"
    raise _broken(f"{running} but {what}", holder, lock_file)


def _broken(message: str, holder: int | None, lock_file: str) -> HomeError:
    """The error for a live daemon that cannot be reached, with how to restart it."""
    stop = f"`kill {holder}`" if holder else f"stop the process holding {lock_file}"
    return HomeError(
        message,
        hint=f"restart it: {stop}, then `hal serve --detach` (running agents keep running)",
    )


def _held(lock_file: str) -> bool:
    """Whether a process holds ``lock_file`` (read-only: a look never creates it)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _unreadable(lock_file, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # lets go of the lock it may have taken
    return False


def _holder(lock_file: str) -> int | None:
    """The pid holding an flock on ``lock_file``, from ``/proc/locks``, else (not listed
    there: another pid namespace's) the pid its info file beside it records; None when
    nobody holds it or neither says."""
    if not _held(lock_file):
        return None
    try:
        inode = os.stat(lock_file).st_ino
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": pid, then MAJ:MIN:INODE.
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return int(fields[4]) if fields[4].isdigit() else None
    info = _parse_info(os.path.join(os.path.dirname(lock_file), "serve.json"))[0]
    return info.pid if info is not None else None


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
