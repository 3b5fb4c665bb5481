"""The suite's clean-up of earlier pytest sessions' tmp dirs (tests/conftest.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import LIVE_LOCK_S, remove_old_tmp


def test_old_sessions_go_but_a_running_sessions_dir_and_the_newest_stay(tmp_path: Path) -> None:
    dirs = [tmp_path / f"pytest-{n}" for n in range(1, 8)]
    for path in dirs:
        (path / "deep" / "deeper").mkdir(parents=True)
    (dirs[1] / ".lock").write_text("")  # a session still running (another terminal)
    stale = dirs[2] / ".lock"  # a session killed days ago: pytest counts its lock dead
    stale.write_text("")
    old = time.time() - LIVE_LOCK_S - 60
    os.utime(stale, (old, old))
    garbage = tmp_path / "garbage-1234"
    garbage.mkdir()
    remove_old_tmp(dirs[-1])
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "pytest-2", "pytest-5", "pytest-6", "pytest-7",
    ]  # fmt: skip
    assert (dirs[1] / "deep" / "deeper").is_dir()
