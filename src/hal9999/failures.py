"""Unexpected exceptions that are the machine's state, not a bug in hal: a full disk, a
database another process kept locked, a damaged database. The CLI and the daemon's API
report each as its :class:`HalError` (one line, its own code and exit status), never as an
internal error."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator

from hal9999.errors import DiskFull, HalError, HomeError


def known_failure(exc: BaseException) -> HalError | None:
    """The error to report for an unexpected ``exc`` that is the machine's state, not a bug
    in hal: standard output refusing writes, a full disk, or a database another process
    kept locked; None otherwise."""
    if (where := output_refused(exc)) is not None:
        from hal9999.errors import OutputError

        return OutputError(
            f"cannot write the output: standard output ({where}) is full",
            hint="send it to a disk with free space, or free space on that one",
        )
    if disk_full(exc):
        return DiskFull(
            "the disk holding hal's home is full", hint="free space on the filesystem of HAL_HOME"
        )
    if store_busy(exc):
        from hal9999.store.sqlite import BUSY_TIMEOUT_S

        return HomeError(
            "hal's database stayed locked by another hal process for longer than "
            f"the {BUSY_TIMEOUT_S:g} s a command waits",
            hint="run the command again; if it keeps happening, look for a stuck "
            "hal process (`pgrep -af hal`)",
        )
    if (damage := store_damage(exc)) is not None:
        return HomeError(
            f"hal's database (hal.db in HAL_HOME) is damaged: {damage}",
            hint="move hal.db aside (tasks are forgotten, sessions stay on disk) or restore a"
            " backup; `hal doctor` checks it",
        )
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, and so on."""
    current: BaseException | None = exc
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a write that failed for lack of disk space."""
    # Only a loaded sqlite3 can have raised one of its errors; do not import it to check.
    sqlite3 = sys.modules.get("sqlite3")
    for current in _causes(exc):
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        # SQLite's "database or disk is full" carries no errno.
        if sqlite3 is not None and isinstance(current, sqlite3.OperationalError):
            return "full" in str(current)
    return False


def output_refused(exc: BaseException) -> str | None:
    """What standard output is (``/dev/full``, "a file on a full disk") when ``exc`` (or what
    caused it) is a write refused for lack of space and standard output has none; None
    otherwise (hal's home may be the full one: :func:`disk_full` says)."""
    import os
    import stat

    if not any(
        isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        for c in _causes(exc)
    ):
        return None
    try:
        st = os.fstat(1)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 7):
            return "/dev/full"
        if stat.S_ISREG(st.st_mode) and os.fstatvfs(1).f_bavail == 0:
            return "a file on a full disk"
    except OSError:
        pass
    return None


def store_busy(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is SQLite giving up on a lock another process
    held past the busy timeout (on a loaded machine: many runners writing at once)."""
    sqlite3 = sys.modules.get("sqlite3")
    for current in _causes(exc):
        if sqlite3 is not None and isinstance(current, sqlite3.OperationalError):
            text = str(current)
            return "locked" in text or "busy" in text
    return False


def store_damage(exc: BaseException) -> str | None:
    """SQLite's words when ``exc`` (or what caused it) is hal.db found damaged (pages
    overwritten, not a database at all); None otherwise."""
    sqlite3 = sys.modules.get("sqlite3")
    for current in _causes(exc):
        if sqlite3 is not None and isinstance(current, sqlite3.DatabaseError):
            name = getattr(current, "sqlite_errorname", None)  # only SQLite's own carry one
            damaged = name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
            return str(current) if damaged else None
    return None
