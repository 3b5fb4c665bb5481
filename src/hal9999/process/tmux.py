"""The tmux process manager: each process runs in its own tmux server and session.

One server per process (its own socket) means the server's environment, which the pane
inherits, holds exactly that process's exec-time environment, and ``kill-server`` ends
everything of that run. The server is a daemon, so the agent outlives the ``hal`` process
that started it, and ``hal task attach`` opens the live pane.

The server loads :data:`NO_UTMP_BUILT` where ``scripts/setup.sh`` built it: tmux records no
utmp login for the pane through libutempter's setgid helper (an agent is not a login; two
processes and ~1.5 ms of CPU a task, issue 16). ``LD_PRELOAD`` names it for the server only:
the server's global environment drops it before the pane opens.

Whether a run still lives is asked of the kernel, not of tmux: the pane's process (the
supervisor) is recorded with its start time when the session opens, and :meth:`status` reads
``/proc`` for it. A ``tmux has-session`` (a fork and exec, and a tmux client's CPU) every
second for every running agent made a daemon with 100 idle agents use ~0.4 of a core (issue
16); a run recorded by an older hal, without the record, is still asked of tmux.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hal9999.errors import ProcessError
from hal9999.process.base import ProcessStatus, boot_id, process_started, read_exit_status
from hal9999.process.launch import run_host, supervised
from hal9999.providers.base import Sandbox
from hal9999.providers.sandboxuser import trusted_program
from hal9999.spec import ProcessSpec

# Unix socket paths are limited to 107 bytes, so sockets live in a short per-user dir.
_SOCKET_DIR = Path(tempfile.gettempdir()) / f"hal9999-tmux-{os.getuid()}"
NO_UTMP_BUILT = Path(__file__).resolve().parents[3] / "build" / "hal-noutmp.so"
"""Where ``scripts/setup.sh`` builds ``scripts/hal-noutmp.c`` in a source checkout."""


class TmuxProcessManager:
    """Runs each process in a detached tmux session on the host."""

    name = "tmux"
    survives_caller = True

    def __init__(self, *, runtime_dir: Path | None = None) -> None:
        self._tmux = shutil.which("tmux")
        # As trustworthy as hal's own code, as the launcher must be: tmux runs it.
        self._no_utmp = trusted_program(NO_UTMP_BUILT)

    def socket(self, spec: ProcessSpec) -> Path:
        """The tmux socket of the process (derived from its log path and name)."""
        key = hashlib.sha256(f"{spec.log_path}\0{spec.name}".encode()).hexdigest()[:20]
        return _SOCKET_DIR / key

    def _base(self, spec: ProcessSpec) -> list[str]:
        if self._tmux is None:
            raise ProcessError("tmux is not installed", hint="apt-get install tmux")
        return [self._tmux, "-S", str(self.socket(spec))]

    async def start(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start ``spec`` in a new tmux server; its pane runs the supervised command."""
        base = self._base(spec)
        _SOCKET_DIR.mkdir(mode=0o700, exist_ok=True)
        await self.stop(spec)
        launch = supervised(sandbox, spec, env)
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
                # whoever attaches (OSC 52 passes through to the outer terminal otherwise).
                "start-server",
                ";",
                *preload,
                "set-option",
                "-s",
                "set-clipboard",
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
                *launch.argv,
            ],
            env=server_env,
        )
        _record_pane(spec, out)

    async def status(self, spec: ProcessSpec) -> ProcessStatus:
        """Exited (with status) once the exit file exists; running while the session lives."""
        code = read_exit_status(spec.exit_path)
        if code is not None:
            return ProcessStatus("exited", code)
        alive = _pane_alive(spec)
        if alive is not None:
            if alive:
                return ProcessStatus("running")
            code = read_exit_status(spec.exit_path)  # it may have ended since the first read
            return ProcessStatus("exited", code) if code is not None else ProcessStatus("missing")
        if self._tmux is None or not self.socket(spec).exists():
            return ProcessStatus("missing")
        status, _ = await run_host([*self._base(spec), "has-session", "-t", spec.name], check=False)
        if status == 0:
            return ProcessStatus("running")
        # The session may have ended between the two checks.
        code = read_exit_status(spec.exit_path)
        return ProcessStatus("exited", code) if code is not None else ProcessStatus("missing")

    async def stop(self, spec: ProcessSpec) -> None:
        """Kill the tmux server; the supervisor passes SIGHUP on to the process group."""
        sock = self.socket(spec)
        if self._tmux is None or not sock.exists():
            _pane_file(spec).unlink(missing_ok=True)
            return
        await run_host([*self._base(spec), "kill-server"], check=False)
        sock.unlink(missing_ok=True)
        _pane_file(spec).unlink(missing_ok=True)

    def attach_command(self, spec: ProcessSpec) -> list[str] | None:
        """``tmux attach`` to the live session."""
        return [*self._base(spec), "attach-session", "-t", spec.name]


def _pane_file(spec: ProcessSpec) -> Path:
    """The pane's process and its start time, beside the exit file (in the session's run
    directory, which no sandbox sees)."""
    return spec.exit_path.with_name(f".{spec.exit_path.name}.pane")


def _record_pane(spec: ProcessSpec, printed: str) -> None:
    """Record the pane's process that ``new-session -P`` printed; nothing when the output
    is not a pid or the process is gone already (``status`` then asks tmux, as before)."""
    lines = printed.strip().splitlines()
    if not lines or not lines[-1].strip().isdigit():
        return
    pid = int(lines[-1])
    started = process_started(pid)
    if started is None:
        return
    path = _pane_file(spec)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(f"{pid} {started} {boot_id()}\n")
    tmp.replace(path)


def _pane_alive(spec: ProcessSpec) -> bool | None:
    """Whether the recorded pane process lives (the same process: a reused pid has another
    start time, and after a reboot the boot differs); None when there is no record."""
    try:
        pid_text, started_text, boot = _pane_file(spec).read_text().split()
        pid, started = int(pid_text), int(started_text)
    except (OSError, ValueError):
        return None
    return boot == boot_id() and process_started(pid) == started
