"""Opening the store of a home hal cannot write (a read-only mount, a snapshot, a backup).

SQLite in WAL mode makes an index file (``hal.db-shm``) beside the database to read it,
which it cannot where the directory is read-only: the database does not open at all, read
or write. There it is opened read-only (``mode=ro``: the index and WAL left by a writer
elsewhere are used when they exist), else as unchanging (``immutable=1``) when no WAL holds
commits it would not see: nobody can write it there either. Standard library only: the thin
``hal task list`` reads through it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3


def read_modes(db: str) -> list[str]:
    """The URI parameters to try, in order, to read ``db``: read-write first, then, when its
    directory is not writable, read-only, then unchanging (when no WAL is left to read)."""
    modes = ["mode=rw"]
    if os.access(os.path.dirname(db) or ".", os.W_OK):
        return modes
    modes.append("mode=ro")
    try:
        wal = os.path.getsize(db + "-wal")
    except OSError:
        wal = 0
    if not wal:  # else it holds commits an unchanging read would not see
        modes.append("mode=ro&immutable=1")
    return modes


def uri(db: str, mode: str) -> str:
    """The SQLite URI of ``db`` opened with ``mode`` (never created)."""
    # The characters a URI's path cannot hold as they are (urllib is dear for the thin path).
    path = db.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{path}?{mode}"


def connect(db: str, *, timeout: float = 5.0) -> tuple[sqlite3.Connection, str]:
    """A connection that reads ``db`` (never created) and the mode it took (see
    :func:`read_modes`); the last mode's error when none opens it."""
    modes = read_modes(db)
    for mode in modes[:-1]:
        with contextlib.suppress(sqlite3.OperationalError):
            return _opened(db, mode, timeout), mode
    return _opened(db, modes[-1], timeout), modes[-1]


def _opened(db: str, mode: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(uri(db, mode), uri=True, timeout=timeout, check_same_thread=False)
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # opens its files (the WAL's)
    except BaseException:
        conn.close()
        raise
    return conn
