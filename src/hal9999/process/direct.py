"""The direct process manager: the supervised command is a plain child process.

One-shot and simple: nothing to attach to, and the run is tied to the life of its caller's
machine session (it is started in its own process group so it can be killed as a whole).

A process's first run ``exec``s its supervisor; from its second on (a daemon) the supervisor
is forked by :mod:`hal9999.process.forkserver` instead, which spares each run an
interpreter's start. Either way the supervisor leads a session of its own and
reports through its exit file, so nothing below depends on whose child it is.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from hal9999 import procs
from hal9999.errors import ProcessError
from hal9999.hostread import read_all
from hal9999.process.base import STOP_WAIT_S, ProcessStatus, read_exit_status
from hal9999.process.forkserver import ForkServerClient, ServerUnavailable
from hal9999.process.launch import supervised
from hal9999.process.supervisor import unstarted_path
from hal9999.process.supervisorargv import FORK_SERVER, SUPERVISOR
from hal9999.providers.base import Sandbox
from hal9999.spec import ProcessSpec


def _pid_file(spec: ProcessSpec) -> Path:
    return spec.exit_path.with_name(f".{spec.exit_path.name}.pid")


def _into_mark(spec: ProcessSpec, pid: int) -> bool:
    """Write ``pid`` into the run's mark, or into the pid file it became (the supervisor's
    rename may come between the two opens, or between an open and its write: the inode is
    the same); False when neither is there. No inode is made. The supervisor writes the same
    pid there before its rename (a hal killed before this write left a claimed run's pid file
    empty); this write is for a stop or status before the supervisor's claim."""
    for path in (unstarted_path(spec.exit_path), _pid_file(spec)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        return True
    return False


class _Starts:
    """Whether this process has started a run before (then it forks the next from the server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self.server = ForkServerClient(FORK_SERVER)

    def another(self) -> bool:
        """Count a start; whether it is not this process's first."""
        with self._lock:
            self._count += 1
            return self._count > 1


_STARTS = _Starts()


class DirectProcessManager:
    """Runs each process as a child of the calling ``hal`` process."""

    name = "direct"
    survives_caller = False

    def __init__(self, *, runtime_dir: Path | None = None) -> None:
        self._children: dict[str, asyncio.subprocess.Process] = {}

    async def start(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Spawn the supervised command in its own process group."""
        # No FIFO beside the exit file (an inode a run): the follower waits on a
        # pidfd of the supervisor instead (see ended_fd).
        # A run armed before its `running` (process.base.arm_start): its supervisor takes the
        # mark by renaming it to the pid file, the one inode of both.
        pid_file = _pid_file(spec)
        launch = supervised(
            sandbox, spec, env, ended_fifo=False, restarts=True, claim=True, claim_as=pid_file
        )
        if launch.claims:  # the mark was there
            pid_file.unlink(missing_ok=True)  # an earlier try's: read before the mark
        pid: int | None = None
        if _STARTS.another() and launch.argv[: len(SUPERVISOR)] == list(SUPERVISOR):
            args = launch.argv[len(SUPERVISOR) :]
            try:
                pid = await asyncio.to_thread(_STARTS.server.spawn, args, launch.env, launch.cwd)
            except ServerUnavailable:  # nothing forked: the run starts as a first one does
                pid = None
            except OSError as exc:  # sent, unanswered: a second start could run it twice
                raise ProcessError(
                    f"the supervisor of {spec.name} did not report its start: {exc}"
                ) from exc
        if pid is None:
            proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=launch.env,
                cwd=launch.cwd,
                start_new_session=True,
            )
            self._children[spec.name] = proc
            pid = proc.pid
        if not (launch.claims and _into_mark(spec, pid)):
            pid_file.write_text(str(pid))

    async def status(self, spec: ProcessSpec) -> ProcessStatus:
        """Exited once the exit file exists; running while the supervisor lives."""
        code = read_exit_status(spec.exit_path)
        if code is not None:
            await self._reap(spec)
            return ProcessStatus("exited", code)
        pid = self._pid(spec)
        if pid is not None and procs.alive(pid):
            return ProcessStatus("running")
        code = read_exit_status(spec.exit_path)
        return ProcessStatus("exited", code) if code is not None else ProcessStatus("missing")

    async def stop(self, spec: ProcessSpec) -> None:
        """Terminate the supervisor's process group, then kill what is left."""
        pid = self._pid(spec)
        if pid is None:
            return
        # The supervisor kills its command once the launch's grace is over (a relay's is
        # its last bring-back of the work): SIGKILL here only past the longest of them.
        await procs.kill_until_gone(pid, group=True, term_s=STOP_WAIT_S, gone_s=2.0)
        await self._reap(spec)
        _pid_file(spec).unlink(missing_ok=True)

    def ended_fd(self, spec: ProcessSpec) -> int | None:
        """A pidfd of the run's supervisor, readable once it has exited (after writing the
        exit file); None when it cannot be had (gone already, no pid file). A pid reused
        meanwhile gives a pidfd that never fires: the follower's naps end on their timeout
        and it polls the exit file as it always does."""
        pid = self._pid(spec)
        if pid is None:
            return None
        try:
            return os.pidfd_open(pid)
        except OSError:
            return None

    def attach_command(self, spec: ProcessSpec) -> list[str] | None:
        """Direct processes have no terminal to attach to."""
        return None

    def _pid(self, spec: ProcessSpec) -> int | None:
        # The pid file; before its supervisor's start, the mark it is renamed from (the pid
        # file again: the rename may fall between the first two reads).
        pid_file = _pid_file(spec)
        for path in (pid_file, Path(unstarted_path(spec.exit_path)), pid_file):
            try:
                return int(read_all(str(path)))
            except FileNotFoundError:
                continue
            except ValueError:
                return None
        return None

    async def _reap(self, spec: ProcessSpec) -> None:
        proc = self._children.pop(spec.name, None)
        if proc is not None:
            await proc.wait()
