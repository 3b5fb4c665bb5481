"""Live processes a test's hal left, found by its home (for tests that check, or make
sure, that nothing outlived them)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


def processes_under(home: Path) -> list[str]:
    """Command lines of live processes that name ``home`` (an agent, tmux, a runner or a
    gateway left)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(home) in cmdline:
            found.append(cmdline)
    return found


def _names(data: bytes, home: bytes) -> bool:
    """Whether NUL-separated ``data`` (a command line, an environment) holds ``home`` or a
    path in it (``home2`` beside it is another test's)."""
    return re.search(re.escape(home) + rb"(?=/|\0|$)", data) is not None


def _points_into(pid: int, home: bytes) -> bool:
    proc = f"/proc/{pid}"
    try:
        cwd = os.fsencode(os.readlink(f"{proc}/cwd"))
        if cwd == home or cwd.startswith(home + b"/"):
            return True
    except OSError:
        pass  # exited, a zombie, or not ours to read: judged by what can be read
    for part in ("cmdline", "environ"):
        try:
            if _names(Path(proc, part).read_bytes(), home):
                return True
        except OSError:
            continue
    return False


def pointing_into(home: Path) -> dict[int, str]:
    """Live processes (this one aside) whose working directory is in ``home`` or whose
    command line or environment names it or a path in it: a daemon, a pool keeper
    (``HAL_KEEPER=<home>/sandboxes/...``, down to its ``sleep infinity``), tmux, an agent.
    pid -> command line. Only this home's: never a pattern another session's could match."""
    wanted = os.fsencode(str(home))
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        if _points_into(pid, wanted):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            found[pid] = argv.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def stop_everything_of(home: Path, env: Mapping[str, str]) -> None:
    """Leave nothing of a test's hal running under ``home``: its daemon stopped if one runs
    (a recovered one drains its pool), each sandbox's keeper stopped as hal stops one (its
    recorded pid, checked by its mount namespace), then each process still pointing into
    ``home`` killed by its pid (pinned by a pidfd and checked again before the signal)."""
    from hal9999.providers.bwrap import keeper
    from hal9999.server.runtime import DaemonFiles

    if (home / "run").is_dir() and DaemonFiles(home).running() is not None:
        subprocess.run([sys.executable, "-m", "hal9999", "serve", "--stop"], env=dict(env),
                       capture_output=True, timeout=60, check=False)  # fmt: skip
    for record in home.glob(f"sandboxes/*/*/run/{keeper.KEEPER_FILE}"):
        keeper.stop(record.parent)
    wanted = os.fsencode(str(home))
    deadline = time.monotonic() + 10
    while (left := pointing_into(home)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(OSError):
                fd = os.pidfd_open(pid)
                try:
                    if _points_into(pid, wanted):  # the same process, still this home's
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
        time.sleep(0.1)
