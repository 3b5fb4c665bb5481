"""The layout of hal's data directory (``HAL_HOME``, default ``$XDG_DATA_HOME/hal9999``).

::

    <home>/hal.db                     the store (SQLite, WAL)
    <home>/sessions/<task-id>/        one task's session: repo, agent home, log, events
    <home>/sandboxes/<provider>/      a provider's own state (sandbox records, images)
    <home>/run/                       sockets and pid files of running hal processes
"""

from __future__ import annotations

import errno
import os

from hal9999.errors import HomeError, UsageError

TYPE_CHECKING = False  # typing, re, pathlib: hal9999.lighttyping says why
if TYPE_CHECKING:
    from pathlib import Path
    from typing import NamedTuple
else:
    from hal9999.lighttyping import NamedTuple

DB_NAME = "hal.db"
"""File name of the store inside the home directory."""


def _safe_name(name: str) -> bool:
    # [A-Za-z0-9][A-Za-z0-9._-]* (without `re`: the thin `hal run` imports this module)
    return (
        name.isascii()
        and name[:1].isalnum()
        and name.replace(".", "a").replace("_", "a").replace("-", "a").isalnum()
    )


def _checked(kind: str, name: str) -> str:
    # Names become path components; refuse anything that could climb out of the home.
    if not _safe_name(name) or name in {".", ".."}:
        raise UsageError(f"invalid {kind} {name!r}", hint="use letters, digits, '.', '_' and '-'")
    return name


class HalPaths(NamedTuple):
    """Where hal keeps its database, sessions and per-provider state. (A ``NamedTuple``, not
    a dataclass: every client imports this module, and ``dataclasses`` with ``inspect`` is
    dear for the thin ``hal run``'s start.)"""

    home: Path
    """The data directory itself."""

    @property
    def db(self) -> Path:
        """The SQLite database file."""
        return self.home / DB_NAME

    @property
    def sessions(self) -> Path:
        """Directory holding one session directory per task."""
        return self.home / "sessions"

    @property
    def sandboxes(self) -> Path:
        """Directory holding one state directory per provider."""
        return self.home / "sandboxes"

    @property
    def run(self) -> Path:
        """Directory for sockets and pid files."""
        return self.home / "run"

    def session(self, task_id: str) -> Path:
        """The session directory of a task."""
        return self.sessions / _checked("task id", task_id)

    def events_path(self, task_id: str) -> Path:
        """The JSONL event log of a task, inside its session directory."""
        return self.session(task_id) / "events.jsonl"

    def sandbox_state(self, provider: str) -> Path:
        """The state directory of a provider."""
        return self.sandboxes / _checked("provider name", provider)

    def ensure(self) -> HalPaths:
        """Create the home and its directories (mode 700 when created); return self.

        Raises :class:`HomeError` naming the directory and the fix when the home is a file,
        lies below a file, or is not writable (a read-only mount, say).
        """
        _refuse_system_directory(self.home)
        for directory in (self.home, self.sessions, self.sandboxes, self.run):
            _mkdir_private(directory)
        spread_once(self.sessions)
        for directory in (self.home, self.sessions, self.run):
            # access() reports EROFS even for root, so a read-only mount is caught here and
            # not as a traceback from SQLite or a half-made session directory later.
            if not os.access(directory, os.W_OK | os.X_OK):
                raise not_writable(directory)
        return self

    def ensure_session(self, task_id: str) -> Path:
        """Create a task's session directory (mode 700) and return it.

        One ``mkdir`` while the home is in place; only when it fails are the home and its
        directories checked (and made) as :meth:`ensure` does, with its errors (checking
        them at every submission would cost system calls on every task)."""
        path = self.session(task_id)
        try:
            os.mkdir(path, 0o700)
        except OSError:
            self.ensure()
            _mkdir_private(path)
            return path
        os.chmod(path, 0o700)  # as _mkdir_private does: 700 whatever the umask
        return path

    def ensure_sandbox_state(self, provider: str) -> Path:
        """Create a provider's state directory (mode 700) and return it."""
        self.ensure()
        path = self.sandbox_state(provider)
        _mkdir_private(path)
        return path


_HOME_FIX = "set HAL_HOME (or `home` in your user config) to a writable directory"


def not_writable(directory: Path) -> HomeError:
    """The error of a command that must write where hal's data directory cannot be written
    (commands that only read it still read it: :mod:`hal9999.store.readonly`)."""
    return HomeError(
        f"hal's data directory is not writable: {directory}", hint=_HOME_FIX, path=str(directory)
    )


SYSTEM_DIRECTORIES = frozenset(
    ["/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt", "/proc", "/run",
     "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/tmp"]
    + [f"/usr/{name}" for name in ("bin", "lib", "lib64", "local", "sbin", "share", "src")]
)  # fmt: skip
"""Directories hal refuses as its home, by real path: it would put ``sessions``, ``run`` and
``hal.db`` among the system's own files (as root, ``HAL_HOME=/`` did)."""


def _refuse_system_directory(home: Path) -> None:
    real = os.path.realpath(home)
    if real in SYSTEM_DIRECTORIES:
        raise HomeError(
            f"hal's data directory {home} is a system directory ({real}), not one of its own",
            hint="set HAL_HOME (or `home` in your user config) to a directory of its own, "
            "such as ~/.local/share/hal9999",
            path=str(home),
        )


_SPREAD: set[str] = set()
"""The directories :func:`spread_once` has flagged (or tried to) in this process."""
_TOPDIR_FL = 0x00020000  # FS_TOPDIR_FL, `chattr +T`
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602


def spread_subdirs(path: Path) -> bool:
    """Flag ``path`` as the top of directory hierarchies (ext2/3/4's ``chattr +T``): the
    filesystem then places each directory made in it in a block group of its own choosing
    (its Orlov allocator, as for the root's), and the inodes made below it there, instead
    of all in the group of ``path`` itself. Without it every session's inodes (its
    directories, ``.git``, events) went to one group, and on ext4 without a journal each new
    inode is found by skipping the inodes its group freed in the last minutes, one buffer
    lookup each: 15-18 % of a busy daemon's CPU here, 6-7 % with the flag. Whether it was
    set (or already was); a filesystem without the flag (ENOTTY, EOPNOTSUPP) or a directory
    not ours to flag is left as it is: only where inodes go changes, nothing else."""
    import array
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _TOPDIR_FL:
            flags[0] |= _TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def spread_once(path: Path) -> None:
    """:func:`spread_subdirs` of ``path``, the first time this process asks (an open and an
    ioctl or two; the sessions directory is ensured at every task's creation)."""
    if str(path) not in _SPREAD:
        _SPREAD.add(str(path))
        spread_subdirs(path)


def _mkdir_private(path: Path) -> None:
    # Only directories hal creates are chmod'ed: HAL_HOME may point at one the user owns.
    try:
        if path.is_dir():
            return
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as exc:
        loop = _symlink_loop(path) if exc.errno in (errno.EEXIST, errno.ELOOP) else None
        if loop is not None:  # was "a file of that name is in the way"
            raise HomeError(
                f"cannot create {path}: {loop} is a symlink loop (it leads back to itself)",
                hint=f"remove the symlink {loop} or point it at a directory, or {_HOME_FIX}",
                path=str(path),
            ) from exc
        raise HomeError(
            f"cannot create {path}: {_why(exc, path)}", hint=_HOME_FIX, path=str(path)
        ) from exc


def _symlink_loop(path: Path) -> Path | None:
    """The first of ``path`` and its parents that is a symlink loop (None: none is)."""
    for part in [*reversed(path.parents), path]:
        try:
            os.stat(part)
        except OSError as exc:
            return part if exc.errno == errno.ELOOP else None
    return None


def _why(exc: OSError, path: Path) -> str:
    """What went wrong, in words a user can act on."""
    if exc.errno == errno.EEXIST and path.is_symlink():
        return f"it is a symlink to {os.readlink(path)}, which does not exist"
    if exc.errno == errno.EEXIST:
        return "a file of that name is in the way"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a directory"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    return exc.strerror or str(exc)


def unusable_session_file(path: Path, exc: OSError) -> HomeError:
    """The error for a file of a task's session that cannot be opened (a directory in its
    place, no permission, a symlink loop): one line naming it, not a crash report."""
    if exc.errno == errno.EROFS:  # not the file's fault: the whole home cannot be written
        return HomeError(
            f"cannot write {path}: hal's data directory is on a read-only file system",
            hint=_HOME_FIX,
            path=str(path),
        )
    why = "it is a directory" if exc.errno == errno.EISDIR else _why(exc, path)
    return HomeError(
        f"cannot open {path}: {why}",
        hint=f"give {path} back to hal as a readable file, or move it aside",
        path=str(path),
    )
