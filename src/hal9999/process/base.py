"""The process-manager contract: start a long-running process in a sandbox and watch it.

Either way the process's combined output goes to ``ProcessSpec.log_path`` and, when it ends,
its exit status is written to ``ProcessSpec.exit_path`` (atomically), so the state of a run
can be read back after the ``hal`` process that started it is gone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from hal9999.providers.base import Sandbox
from hal9999.spec import ProcessSpec

ProcessState = Literal["running", "exited", "missing"]
STOP_WAIT_S = 120.0
"""The longest a stop waits for a run to end: past the longest grace a launch asks for
(:attr:`~hal9999.providers.base.Launch.stop_grace_s`), after which its supervisor kills it."""


@dataclass(frozen=True)
class ProcessStatus:
    """What became of a process."""

    state: ProcessState
    exit_code: int | None = None


@runtime_checkable
class ProcessManager(Protocol):
    """Runs agents (and other long-running processes) inside sandboxes."""

    name: str
    survives_caller: bool
    """Whether the process outlives the ``hal`` process that started it."""

    async def start(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start the process; ``env`` is exec-time environment (secrets)."""
        ...

    async def status(self, spec: ProcessSpec) -> ProcessStatus:
        """Whether the process runs, and its exit status once it has ended."""
        ...

    async def stop(self, spec: ProcessSpec) -> None:
        """Stop the process and everything it started, and return once it has ended (a
        relay's last bring-back of the work included: see :func:`run_ended`), at most
        :data:`STOP_WAIT_S` later. Idempotent."""
        ...

    def attach_command(self, spec: ProcessSpec) -> list[str] | None:
        """A host command line that attaches a terminal to the process, if possible."""
        ...


_STATUS_READ = 4096
"""One read of an exit file (a status is a few bytes: regular files fill a read)."""


def read_exit_status(path: Path) -> int | None:
    """The exit status recorded at ``path``, or None when the process has not ended.

    Read on every look of a run's follower (from every 5 ms), and twice more when its agent
    ends, on the way to the collection: one ``open``, ``read`` and ``close`` (a text file
    object made nine system calls: ``fstat`` twice, ``ioctl``, ``lseek`` twice and a second
    ``read``), and ``O_NONBLOCK``, so that anything but a regular file there (a FIFO) is
    never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, _STATUS_READ)
        if len(data) == _STATUS_READ:  # never a status: the rest of a longer file, as before
            chunks = [data]
            while chunk := os.read(fd, _STATUS_READ):
                chunks.append(chunk)
            data = b"".join(chunks)
    except BlockingIOError:  # a FIFO that someone holds open
        return None
    finally:
        os.close(fd)
    try:
        return int(data.decode().strip())
    except ValueError:  # UnicodeDecodeError too
        return None


def never_started(exit_path: Path) -> bool:
    """Whether the run whose exit file is ``exit_path`` had not started its command when
    looked at: its :func:`~hal9999.process.supervisor.unstarted_path` marker is there and no
    exit status is recorded. The marker is left by a supervisor started ahead of its run
    that ended without its ``g`` (tmux), or is the one hal made before recording the run
    ``running`` that no supervisor has taken yet (:func:`arm_start`: direct, PM2; such a
    supervisor may still come to its start: :func:`take_unstarted` settles it). False when
    unknown (no marker)."""
    from hal9999.process.supervisor import unstarted_path

    return os.path.lexists(unstarted_path(exit_path)) and not exit_path.exists()


def take_unstarted(exit_path: Path) -> bool:
    """Whether the run whose exit file is ``exit_path`` never started its command, and never
    will: as :func:`never_started`, and its marker is taken here (removed by one ``unlink``,
    as its supervisor takes it just before a start: only one of the two has it), so a
    supervisor that comes to its start later starts nothing. For a run whose runner is
    dead, by the one that queues it again."""
    from hal9999.process.supervisor import unstarted_path

    if exit_path.exists():
        return False
    try:
        os.unlink(unstarted_path(exit_path))
    except OSError:  # none, or a supervisor took it (its command may have started)
        return False
    return not exit_path.exists()


def arm_start(exit_path: Path) -> None:
    """Before a run is recorded ``running``, for a manager that starts nothing ahead of it:
    make the marker that says its command has not started. Its supervisor (``--claim``)
    takes it just before the start; a runner killed -9 before then leaves it for the next
    daemon, which queues the task again (:func:`take_unstarted`). Made with ``O_EXCL`` and
    never through a link; one already there (an earlier try's) says the same. Best effort:
    without it, such a kill leaves the task ``interrupted``, as before."""
    from hal9999.process.supervisor import unstarted_path

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.close(os.open(unstarted_path(exit_path), flags, 0o600))
    except OSError:
        pass


async def run_ended(exit_path: Path, limit_s: float = STOP_WAIT_S) -> bool:
    """Wait until the supervisor of the run whose exit file is ``exit_path`` has ended (its
    :func:`~hal9999.process.runlock.running_path` lock free), at most ``limit_s``;
    whether it has. From any process: the lock is the supervisor's, not its starter's. A
    run with no lock file (none started, or a supervisor from before) has ended."""
    import asyncio
    import fcntl

    from hal9999.process.runlock import running_path

    try:
        fd = os.open(running_path(exit_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        deadline = time.monotonic() + limit_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            # Polling: another process's lock cannot be awaited as an event here.
            await asyncio.sleep(0.05)
    finally:
        os.close(fd)
