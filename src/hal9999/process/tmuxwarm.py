"""Warm panes: idle sessions on a daemon's shared tmux server whose supervisor has started
and waits for a run.

A run's supervisor is a Python interpreter (dear to start); opened ahead of the
run (:meth:`TmuxProcessManager.prestart`) its start still bounded the run's time to
``running``. The daemon keeps :data:`WARM_PANES` such sessions ready; a run claims one, and
its prestart is one write and one tmux client (the session renamed as the run's).

A warm supervisor (``--warm FIFO``, see :func:`hal9999.process.supervisor.wait_warm`) knows
nothing of any run: its argv names only its FIFO (a private one, in the per-user socket
directory, 0600), its environment is the server's global one (nothing of hal's) and tmux's
own. A run hands it, through that FIFO, its options and command, its working directory and
the exact environment of its command (its secrets too: never argv, never the server's global
environment); the supervisor then waits for the run's go as any prestarted one does, so a
warm pane never starts anything without its run's go. The daemon holds each FIFO open (read
and write: never waits) until the pane's run has ended: should it end first, however (even
``kill -9``), an idle pane's supervisor reads the FIFO's end and exits without starting
anything, its session with it, and a claimed one's run ends as any prestarted run whose go
never came. A pane is claimed once (taken off the idle list before its FIFO is written), so
never run twice; a FIFO left by a killed daemon is removed by the next one.

The next pane is opened when a run has been let start (off its path to ``running``), one at
a time, up to :data:`WARM_PANES` idle.
"""

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

from hal9999 import procs
from hal9999.errors import HalError
from hal9999.process.launch import run_host
from hal9999.process.supervisorargv import SUPERVISOR
from hal9999.process.tmuxearly import new_session as new_session  # its old home
from hal9999.providers.base import Launch

WARM_PANES = 1
"""Idle warm panes a daemon keeps (each an interpreter, ~10 MiB, waiting)."""

MESSAGE_MAX = 60_000
"""The largest hand-over written to a warm pane (a pipe holds 64 KiB: one write, never a
wait); a run with more (a huge environment) opens its own pane, as before."""


class WarmPane(NamedTuple):
    """An idle session waiting for a run: its name, its FIFO (held open as ``fd``) and its
    supervisor (pid and start time: a reused pid has another). (A ``NamedTuple``: a frozen
    dataclass is compiled at import, on every in-process run's start.)"""

    name: str
    fifo: Path
    fd: int
    pid: int
    started: int


def message(launch: Launch, cwd: str) -> bytes:
    """What a warm supervisor reads for ``launch`` (see :func:`supervisor.wait_warm`): the
    supervisor's options and command (``launch.argv`` past :data:`SUPERVISOR`), ``cwd``, and
    the command's environment."""
    argv = list(launch.argv[len(SUPERVISOR) :])
    fields = [cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in launch.env.items())]
    body = b"".join(os.fsencode(field) + b"\0" for field in fields)
    return b"%d\n" % len(body) + body


class WarmPanes:
    """The warm panes of one daemon's shared server (at ``socket``)."""

    def __init__(self, tmux: str, socket: Path, *, size: int = WARM_PANES) -> None:
        self._tmux = tmux
        self._socket = socket
        self.size = size
        self.idle: list[WarmPane] = []
        self._filling: asyncio.Task[None] | None = None
        self._count = 0
        self._closed = False
        self._prefix = f"w-{hashlib.sha256(str(socket).encode()).hexdigest()[:12]}-"

    def sweep(self) -> None:
        """Remove the FIFOs of an earlier daemon of this server (its idle panes ended with
        it; a claimed one's supervisor has its FIFO open, or never will)."""
        mine = f"{self._prefix}{os.getpid()}-"
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._socket.parent):
                if entry.name.startswith(self._prefix) and not entry.name.startswith(mine):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def claim(self) -> WarmPane | None:
        """An idle pane whose supervisor lives, taken off the list (never handed twice);
        None when there is none (the dead ones let go)."""
        while self.idle:
            pane = self.idle.pop(0)
            if procs.started(pane.pid) == pane.started:
                return pane
            let_go(pane.fd, pane.fifo)
        return None

    def refill(self) -> None:
        """Open the next pane in the background, unless enough are idle or one is opening."""
        if self._closed or len(self.idle) >= self.size:
            return
        if self._filling is not None and not self._filling.done():
            return
        self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        while not self._closed and len(self.idle) < self.size:
            try:
                pane = await self._open()
            except (HalError, OSError, ValueError):  # none: the runs open their own panes
                return
            if self._closed:
                let_go(pane.fd, pane.fifo)
                return
            self.idle.append(pane)

    async def _open(self) -> WarmPane:
        self._count += 1
        name = f"hal-warm-{os.getpid()}-{self._count}"
        fifo = self._socket.parent / f"{self._prefix}{os.getpid()}-{self._count}"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            argv = [
                self._tmux,
                "-N",  # never a server of this client's
                "-S",
                str(self._socket),
                # The pane's environment: the server's global one (nothing of hal's) and
                # tmux's own; the run's comes through the FIFO.
                "set-option",
                "-g",
                "update-environment",
                "TERM",
                ";",
                *new_session(name, str(self._socket.parent)),
                *SUPERVISOR,
                "--warm",
                str(fifo),
            ]
            _, out = await run_host(argv, env={"TERM": "xterm-256color"})
            pid = int(out.strip().splitlines()[-1])
            started = procs.started(pid)
            if started is None:
                raise OSError(f"warm pane {name} ended at its start")
        except BaseException:
            let_go(fd, fifo)
            raise
        return WarmPane(name, fifo, fd, pid, started)

    async def close(self) -> None:
        """Let every idle pane go (each supervisor reads its FIFO's end and exits, its
        session with it); a pane being opened is let go when it is."""
        self._closed = True
        if self._filling is not None:
            with contextlib.suppress(BaseException):
                await self._filling
        while self.idle:
            pane = self.idle.pop()
            let_go(pane.fd, pane.fifo)


def let_go(fd: int, fifo: Path) -> None:
    """Close a warm pane's FIFO (its supervisor, if it waits, exits) and remove it."""
    with contextlib.suppress(OSError):
        os.close(fd)
    fifo.unlink(missing_ok=True)
