"""The socket entries a tmux manager made for its runs, removed when it sees a run end.

tmux (3.3a) leaves a server's socket file behind when the server exits, and a daemon's run
leaves the link to the shared server it made: left alone, the per-user socket
directory would hold an entry for every run there had ever been (thousands on a
busy host, each listing paid for). The manager that made an entry (opened the run's server, renamed
an early pane's socket to the run's, or linked the run's socket to the shared server) removes
it once its :meth:`status` has seen the run end: the exit status is read or the pane's process
is gone, so no session is left to attach to. Only while the entry is the one it made (its
inode, type and modification time, :func:`identity`): a later run of the same spec (a resumed
task's, by another ``hal``) may have made its own there. A manager that adopts a run (its
status asks tmux for the pane of a run it did not start: a restarted daemon) notes the entry
then, and removes it likewise when it sees that run end; a one-off ``hal task show`` notes it
and ends. Entries of a killed ``hal``, and those left before, are the daemon's sweep's
(:mod:`hal9999.process.tmuxsweep`).
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
            self._made[socket] = identity(os.lstat(socket))

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
            if made == identity(os.lstat(socket)):
                socket.unlink()


def identity(made: os.stat_result) -> tuple[int, ...]:
    """What tells a socket entry from another made at its path since: its inode and type
    (a file system may give a freed inode number to the next file at once) and its
    modification time, which neither a server's mode changes (as clients attach) nor a
    rename or a link change, as they change its change time."""
    return (made.st_dev, made.st_ino, stat.S_IFMT(made.st_mode), made.st_mtime_ns)
