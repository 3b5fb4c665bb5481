"""The suite's own check that a test's hal left nothing running: it finds exactly the
processes that point into one home (never a neighbour's), and stops them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

from tests.processes import pointing_into, stop_everything_of


def test_only_this_homes_processes_are_found_and_stopped(tmp_path: Path) -> None:
    home, beside = tmp_path / "home", tmp_path / "home2"
    home.mkdir()
    beside.mkdir()
    started = [
        subprocess.Popen(["sleep", "60"], cwd=home, start_new_session=True),
        subprocess.Popen(["sleep", "60"], env={"HAL_KEEPER": f"{home}/sandboxes/bwrap/x"}),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(home / "log")]),
        subprocess.Popen(["sleep", "60"], cwd=beside, env={"HAL_HOME": str(beside)}),
    ]
    try:
        for proc in started:
            _exec_done(proc)
        ours = [proc.pid for proc in started[:3]]
        assert sorted(pointing_into(home)) == sorted(ours)
        stop_everything_of(home, {})
        assert pointing_into(home) == {}
        assert [proc.wait(timeout=10) for proc in started[:3]] == [-9, -9, -9]
        assert started[3].poll() is None, "another home's process is left alone"
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def _exec_done(proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``proc``'s exec has set its command line and environment up. Popen returns
    once the child's exec is under way, and until then both read empty (here, right after
    Popen, 1 in 5 times): the search would miss a process it must find."""
    argv = b"".join(os.fsencode(arg) + b"\0" for arg in cast("list[str]", proc.args))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        if cmdline == argv and Path(f"/proc/{proc.pid}/environ").read_bytes():
            return
        time.sleep(0.01)
    raise AssertionError(f"{proc.args!r} did not finish its exec")
