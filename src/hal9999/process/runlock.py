"""The lock a run's supervisor holds for the run's life: how any process waits for a run's
end (:func:`hal9999.process.base.run_ended`), whoever started or stopped it. Standard
library only (``posix``, ``fcntl``): the supervisor imports it at every task's start."""

from __future__ import annotations

import posix

from hal9999.process.caplog import beside

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os


def running_path(exit_file: str | os.PathLike[str]) -> str:
    """The file beside ``exit_file`` whose ``flock`` the supervisor holds from before its
    command starts until after its exit status is written: any process waits on it for the
    run's end (:func:`hal9999.process.base.run_ended`), whoever started or stopped it, and
    a supervisor that died (``kill -9``) lets go of it with its last breath."""
    path = posix.fspath(exit_file)
    return beside(path, f".{path.rpartition('/')[2]}.running")


def hold_running(exit_file: str) -> int | None:
    """Take the :func:`running_path` lock for this run (never through a link); its fd, kept
    open (close-on-exec: the command does not hold it) until this process ends. None when
    it cannot be had: a stop then waits for nothing, as before."""
    import fcntl  # a built-in module: no file is read for it

    flags = posix.O_RDWR | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_CLOEXEC
    try:
        fd = posix.open(running_path(exit_file), flags, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        posix.close(fd)
        return None
    return fd
