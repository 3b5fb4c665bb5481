"""The suite's own check that a test's hal left nothing running: it finds exactly the
processes that point into one home (never a neighbour's), and stops them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
