"""What a hal command that ran out of time was doing, for the test's failure message: the
daemon's log, each task's last events and runner log, the processes pointing into the home,
and (where ``py-spy`` is installed) the Python stacks of the command and the daemon."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.processes import pointing_into

_TAIL = 30


def _tail(path: Path, lines: int = _TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _stack(pid: int) -> str:
    # The venv's own (a dev dependency: CI's PATH need not have the venv's bin), else PATH's.
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        return "(py-spy not installed)"
    try:
        done = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "(py-spy timed out)"
    return (done.stdout + done.stderr).strip()


def hang_report(home: Path, pid: int | None = None) -> str:
    """The state of ``home`` and of the hal command ``pid`` (still running)."""
    parts = [
        f"--- {home / 'run' / 'serve.log'} (last {_TAIL} lines)",
        _tail(home / "run" / "serve.log"),
    ]
    sessions = home / "sessions"
    for session in sorted(sessions.iterdir()) if sessions.is_dir() else []:
        parts += [f"--- task {session.name}: last events", _tail(session / "events.jsonl", 8)]
        parts += [f"--- task {session.name}: runner.log", _tail(session / "run" / "runner.log", 10)]
    procs = pointing_into(home)
    parts.append("--- processes pointing into the home")
    parts += [f"{p}: {cmd[:300]}" for p, cmd in sorted(procs.items())]
    pythons = [p for p, cmd in procs.items() if "hal9999" in cmd and p != pid]
    for target in ([pid] if pid else []) + pythons:
        parts += [f"--- Python stack of {target}", _stack(target)]
    return "\n".join(parts)
