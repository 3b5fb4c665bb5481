"""The tmux process manager: each process runs in its own tmux server and session.

One server per process (its own socket) means the server's environment, which the pane
inherits, holds exactly that process's exec-time environment, and ``kill-server`` ends
everything of that run. The server is a daemon, so the agent outlives the ``hal`` process
that started it, and ``hal task attach`` opens the live pane.

The server reads no tmux configuration (``-f /dev/null``): a host's or user's ``tmux.conf``
could set hooks or ``run-shell`` commands that run on the host in hal's sessions, or change
how a run ends (``remain-on-exit``, ``default-command``).

The server loads :data:`NO_UTMP_BUILT` where ``scripts/setup.sh`` built it: tmux records no
utmp login for the pane through libutempter's setgid helper (an agent is not a login; two
processes and ~1.5 ms of CPU a task, issue 16). ``LD_PRELOAD`` names it for the server only:
the server's global environment drops it before the pane opens.

Whether a run still lives is asked of the kernel, not of tmux: the manager learns the pane's
process (the supervisor) and its start time once, from ``new-session -P`` when it starts
the run, or from one ``display-message`` for a run it did not start (an adopted one), and
:meth:`status` reads ``/proc`` for it after that. A ``tmux has-session`` (a fork and exec,
and a tmux client's CPU) every second for every running agent made a daemon with 100 idle
agents use ~0.4 of a core (issue 16).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hal9999.errors import ProcessError
from hal9999.process.base import ProcessStatus, process_started, read_exit_status
from hal9999.process.launch import run_host, supervised
from hal9999.process.supervisor import go_path
from hal9999.providers.base import Launch, Sandbox
from hal9999.providers.sandboxuser import trusted_program
from hal9999.spec import ProcessSpec

# Unix socket paths are limited to 107 bytes, so sockets live in a short per-user dir.
_SOCKET_DIR = Path(tempfile.gettempdir()) / f"hal9999-tmux-{os.getuid()}"
NO_UTMP_BUILT = Path(__file__).resolve().parents[3] / "build" / "hal-noutmp.so"
"""Where ``scripts/setup.sh`` builds ``scripts/hal-noutmp.c`` in a source checkout."""


def _run_key(
    sandbox: Sandbox, spec: ProcessSpec, env: Mapping[str, str] | None
) -> tuple[object, ...]:
    """What a prestarted pane was opened for: its supervisor's command and environment."""
    return (sandbox.id, spec, dict(env or {}))


def verbatim(arg: str) -> str:
    """``arg`` as tmux reads it back from its command line: tmux takes an argument ending in
    ``;`` for the end of a command (the ``;`` dropped, the arguments after it a tmux command,
    ``run-shell`` say, run on the host outside the sandbox), unless it is escaped as ``\\;``.
    For every argument of an agent's command hal hands tmux, here and on an ssh host."""
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


class TmuxProcessManager:
    """Runs each process in a detached tmux session on the host."""

    name = "tmux"
    survives_caller = True

    def __init__(self, *, runtime_dir: Path | None = None) -> None:
        self._tmux = shutil.which("tmux")
        # As trustworthy as hal's own code, as the launcher must be: tmux runs it.
        self._no_utmp = trusted_program(NO_UTMP_BUILT)
        self._panes: dict[Path, tuple[int, int]] = {}
        """Per socket, the pane's process and its start time (a reused pid has another)."""
        self._early: dict[Path, tuple[int, tuple[object, ...]]] = {}
        """Per socket, a run :meth:`prestart` opened: its FIFO and what it was opened for."""
        self._go: dict[Path, int] = {}
        """Per socket, the FIFO of a run :meth:`start` let start, held until it ended."""

    def socket(self, spec: ProcessSpec) -> Path:
        """The tmux socket of the process (derived from its log path and name)."""
        key = hashlib.sha256(f"{spec.log_path}\0{spec.name}".encode()).hexdigest()[:20]
        return _SOCKET_DIR / key

    def _base(self, spec: ProcessSpec) -> list[str]:
        if self._tmux is None:
            raise ProcessError("tmux is not installed", hint="apt-get install tmux")
        # -f: the server hal starts loads no /etc/tmux.conf, ~/.tmux.conf or XDG's, whose
        # hooks, run-shell or default-command would run host commands in hal's sessions
        # (only a starting server reads it: a client attaching is unaffected).
        return [self._tmux, "-S", str(self.socket(spec)), "-f", "/dev/null"]

    async def prestart(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Open ``spec``'s session while the caller does other work (a task's checkout), its
        supervisor waiting on a FIFO (``--go``) until :meth:`start` with the same sandbox,
        spec and environment lets the command start: the server's start (its option tables
        and key bindings) and the supervisor's interpreter leave the run's path (issue 16).

        The FIFO is held open here until the run has ended or is stopped: should this
        process end first, the waiting supervisor reads the FIFO's end and exits without
        starting anything (no exit status), its pane and server with it."""
        await self.stop(spec)
        launch = supervised(sandbox, spec, env, go=True)
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW  # never waits
        go = os.open(go_path(spec.exit_path), flags)
        try:
            await self._open(spec, launch)
        except BaseException:
            os.close(go)
            raise
        self._early[self.socket(spec)] = (go, _run_key(sandbox, spec, env))

    async def start(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start ``spec`` in a new tmux server, or let the one :meth:`prestart` opened for
        the same sandbox, spec and environment start; its pane runs the supervised command."""
        socket = self.socket(spec)
        early = self._early.pop(socket, None)
        if early is not None:
            go, key = early
            pane = self._panes.get(socket)
            alive = pane is not None and process_started(pane[0]) == pane[1]
            if alive and key == _run_key(sandbox, spec, env):
                os.write(go, b"g")
                self._go[socket] = go  # until the supervisor has surely read it
                return
            os.close(go)  # another run's pane, or one already gone: not this run's
        await self.stop(spec)
        await self._open(spec, supervised(sandbox, spec, env))

    async def _open(self, spec: ProcessSpec, launch: Launch) -> None:
        """A new server and session for ``spec`` whose pane runs ``launch``."""
        base = self._base(spec)
        _SOCKET_DIR.mkdir(mode=0o700, exist_ok=True)
        server_env = dict(launch.env)
        server_env.setdefault("TERM", "xterm-256color")
        preload: list[str] = []
        if self._no_utmp is not None and "LD_PRELOAD" not in server_env:
            server_env["LD_PRELOAD"] = self._no_utmp
            preload = ["set-environment", "-g", "-u", "LD_PRELOAD", ";"]  # not the pane's
        cwd = str(launch.cwd) if launch.cwd else str(spec.log_path.parent)
        _, out = await run_host(
            [
                *base,
                # Before the agent's pane exists: the agent must not write the clipboard of
                # whoever attaches (OSC 52 passes through to the outer terminal otherwise),
                # nor pass any sequence through tmux to that terminal (`ESC P tmux; ...`),
                # whatever the defaults of this tmux say (-q: a tmux before 3.3 has no such
                # option, and passes nothing through).
                "start-server",
                ";",
                *preload,
                "set-option",
                "-s",
                "set-clipboard",
                "off",
                ";",
                "set-option",
                "-gq",
                "allow-passthrough",
                "off",
                ";",
                "new-session",
                "-d",
                "-P",  # print the pane's process, to be watched through /proc
                "-F",
                "#{pane_pid}",
                "-s",
                spec.name,
                "-x",
                "200",
                "-y",
                "50",
                "-c",
                cwd,
                "--",
                *map(verbatim, launch.argv),
            ],
            env=server_env,
        )
        self._remember(spec, out)

    async def status(self, spec: ProcessSpec) -> ProcessStatus:
        """Exited (with status) once the exit file exists; running while the session lives."""
        code = read_exit_status(spec.exit_path)
        if code is not None:
            self._let_go(self.socket(spec))
            return ProcessStatus("exited", code)
        socket = self.socket(spec)
        pane = self._panes.get(socket)
        if pane is None and self._tmux is not None and socket.exists():
            # A run this manager did not start: tmux names its pane once (and fails as
            # has-session did when the session is gone).
            status, out = await run_host(
                [*self._base(spec), "display-message", "-p", "-t", spec.name, "#{pane_pid}"],
                check=False,
            )
            if status == 0:
                self._remember(spec, out)
                pane = self._panes.get(socket)
        if pane is not None and process_started(pane[0]) == pane[1]:
            return ProcessStatus("running")
        self._panes.pop(socket, None)
        self._let_go(socket)
        # The process may have ended, writing its status, since the first read.
        code = read_exit_status(spec.exit_path)
        return ProcessStatus("exited", code) if code is not None else ProcessStatus("missing")

    def _remember(self, spec: ProcessSpec, printed: str) -> None:
        """Note the pane's process tmux printed (``#{pane_pid}``); nothing when the output
        is not a pid or the process is gone already."""
        lines = printed.strip().splitlines()
        if lines and lines[-1].strip().isdigit():
            pid = int(lines[-1])
            started = process_started(pid)
            if started is not None:
                self._panes[self.socket(spec)] = (pid, started)

    def _let_go(self, socket: Path) -> None:
        """Close the FIFO of the run at ``socket``: a supervisor still waiting on it ends."""
        early = self._early.pop(socket, None)
        for fd in (early[0] if early is not None else None, self._go.pop(socket, None)):
            if fd is not None:
                os.close(fd)

    async def stop(self, spec: ProcessSpec) -> None:
        """Kill the tmux server; the supervisor passes SIGHUP on to the process group."""
        sock = self.socket(spec)
        self._panes.pop(sock, None)
        self._let_go(sock)
        if self._tmux is None or not sock.exists():
            return
        await run_host([*self._base(spec), "kill-server"], check=False)
        sock.unlink(missing_ok=True)

    def attach_command(self, spec: ProcessSpec) -> list[str] | None:
        """``tmux attach`` to the live session."""
        return [*self._base(spec), "attach-session", "-t", spec.name]
