"""The socket entries a tmux manager made for its runs, removed when it sees a run end.

tmux (3.3a) leaves a server's socket file behind when the server exits, and a daemon's run
leaves the link to the shared server it made: nothing removed either, and the per-user socket
directory held an entry for every run there had ever been (~3,900 here; listing ~3,000 cost
~13M instructions, issue 16). The manager that made an entry (opened the run's server, renamed
an early pane's socket to the run's, or linked the run's socket to the shared server) removes
it once its :meth:`status` has seen the run end: the exit status is read or the pane's process
is gone, so no session is left to attach to. Only while the entry is the one it made (its
inode and type, and a link's change time: tmpfs gives a freed inode number to the next file
at once; a server's socket changes mode as clients attach, and its time with it): a later
run of the same spec (a resumed task's, by another ``hal``) may have made its own there.
Another process that only asks the status (``hal task show``, a restarted daemon that adopted
the run) removes nothing: entries of runs adopted by a restarted daemon, of a killed ``hal``,
and those left before this change are the daemon's sweep's (:mod:`hal9999.process.tmuxsweep`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


class OwnSockets:
    """Per socket entry this manager made, what tells it from another made at its path."""

    def __init__(self) -> None:
        self._made: dict[Path, tuple[int, ...]] = {}

    def note(self, socket: Path) -> None:
        """``socket`` was made now by this manager, for its run."""
        with contextlib.suppress(OSError):
            self._made[socket] = _identity(os.lstat(socket))

    def forget(self, socket: Path) -> None:
        """``socket`` is no longer this manager's to remove (its stop removes it anyway)."""
        self._made.pop(socket, None)

    def remove(self, socket: Path) -> None:
        """The run at ``socket`` has ended: its entry goes if this manager made it (one
        stat and one unlink, no tmux)."""
        made = self._made.pop(socket, None)
        if made is None:
            return
        with contextlib.suppress(OSError):
            if made == _identity(os.lstat(socket)):
                socket.unlink()


def _identity(made: os.stat_result) -> tuple[int, ...]:
    link = stat.S_ISLNK(made.st_mode)
    return (made.st_dev, made.st_ino, stat.S_IFMT(made.st_mode), made.st_ctime_ns if link else 0)
