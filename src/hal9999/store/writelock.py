"""The lock this process's writers of one database take before SQLite's write lock.

Why: a daemon's threads (six executor workers and the event flusher, a connection each)
met on SQLite's write lock, whose busy handler polls with sleeps of 1 to 100 ms (dozens of
them a throughput task): a waiter slept on long after the lock was free. Queued here instead,
the next writer of this process is woken as the last one commits; SQLite's own wait is left
for other processes' writers, and for a writer that waited here past the busy timeout (which
then goes on to SQLite as before: a writer that never ends makes the others fail as they
did, not hang). Reentrant: a thread that writes within its own write goes on to SQLite, as
before.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_LOCK = threading.Lock()


def writers_of(path: Path) -> threading.RLock:
    """The lock of the database at ``path`` (the same for every ``Store`` on it)."""
    key = os.path.abspath(path)
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(key, threading.RLock())


class WriteBusy(Exception):
    """A write told not to wait (``wait=False``) found the write lock taken, by a thread of
    this process or by another process; nothing was written. Not a :class:`HalError`: the
    caller makes the same write again, waiting (in a thread)."""
