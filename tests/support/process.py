"""Process specs, exits, tmux panes and servers for the process-manager tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

from hal9999.process.base import ProcessManager
from hal9999.process.direct import DirectProcessManager
from hal9999.spec import ArgvCommand, ProcessSpec, ShellCommand


def spec_for(tmp_path: Path, command: ArgvCommand | ShellCommand) -> ProcessSpec:
    """A process spec logging under ``tmp_path``."""
    return ProcessSpec(
        name="hal-test",
        command=command,
        log_path=tmp_path / "run" / "out.log",
        exit_path=tmp_path / "run" / "exit",
    )


async def wait_exit(manager: ProcessManager, spec: ProcessSpec, timeout: float = 20) -> int:
    """Poll until the process has exited; return its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await manager.status(spec)
        if status.state == "exited":
            assert status.exit_code is not None
            return status.exit_code
        await asyncio.sleep(0.05)
    raise AssertionError("process did not exit")


TITLE = "hal: run succeeded"


SETS_TITLE = f"printf '\\033]2;{TITLE}\\033\\\\'; sleep 5"
"""A pane command that sets the pane's title (OSC 2), as any agent may."""


def _status_line(socket: Path | str, target: str) -> str:
    """The status line of an attached client, expanded (its left and right parts)."""
    shown = subprocess.run(
        ["tmux", "-S", str(socket), "display-message", "-p", "-t", target,
         "#{T:status-left}#{T:status-right}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return shown.stdout


def _pane_title(socket: Path | str) -> str:
    """The titles of the server's panes ("" while it is not up)."""
    argv = ["tmux", "-S", str(socket), "list-panes", "-a", "-F", "#{pane_title}"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def servers(socket: Path) -> list[int]:
    """The tmux servers of ``socket`` (a server keeps the argv of the client that forked
    it, which names the socket), whether or not the socket file is still there.

    A pane's process the server has forked and not yet exec'd has the server's name and argv
    too (on a loaded host for some milliseconds): one whose parent is such a server is not
    counted."""
    found: dict[int, int] = {}  # pid -> parent's pid
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if comm == "tmux: server" and str(socket).encode() in argv:
            found[int(pid)] = int(stat.rpartition(")")[2].split()[1])
    return [pid for pid, parent in found.items() if parent not in found]


def _reads(pid: int, fifo: Path) -> bool:
    """Whether process ``pid`` has ``fifo`` open (it waits on it)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(fifo)
                   for fd in os.listdir(f"/proc/{pid}/fd"))  # fmt: skip
    except OSError:
        return False


def run_spec(tmp_path: Path, name: str, script: str) -> ProcessSpec:
    """A process spec named ``name`` running ``script``, logging under ``tmp_path``."""
    return ProcessSpec(
        name=name,
        command=ShellCommand(script=script),
        log_path=tmp_path / name / "out.log",
        exit_path=tmp_path / name / "exit",
    )


def supervisor_of(log: Path) -> int | None:
    """The pid of the supervisor writing ``log``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = any(b"process.supervisor" in arg for arg in argv[:5]) and b"--log" in argv
        if ours and argv[argv.index(b"--log") + 1] == str(log).encode():
            return int(pid)
    return None


def supervisor_pid(manager: ProcessManager, spec: ProcessSpec) -> int | None:
    """The run's supervisor: exec'd (tmux, a process's first direct run) or forked by the
    fork server (its later ones), whose command line is the server's."""
    if isinstance(manager, DirectProcessManager):
        return manager._pid(spec)
    return supervisor_of(spec.log_path)
