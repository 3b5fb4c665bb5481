"""One agent making empty files by the thousand is stopped at its sandbox's file limit
(``disk_files``), with ``disk_limit``, while a task running beside it finishes: its files
no longer use up the inodes of the disk every task shares (which would stop them all)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from tests.support.cli import assert_no_leftovers
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

MANY = (
    "sh -c 'echo kept > kept.txt; mkdir -p many /tmp/hid; i=0; "
    "while [ $i -lt 1500 ]; do : > /tmp/hid/f$i; i=$((i+1)); done; chmod 000 /tmp/hid; "
    "while [ $i -lt 2600 ]; do : > many/f$i; i=$((i+1)); done; echo made; sleep 60; "
    "echo ran-on'"
)
"""1500 files in the sandbox's /tmp, in a directory it then makes unreadable, then 1100 in
the workspace: 2600 in all against a limit of 2000 that neither place passes alone."""


def test_an_agent_past_its_file_limit_stops_and_the_task_beside_it_finishes(hal: Hal) -> None:
    hostile: dict[str, object] = {}

    def run_hostile() -> None:
        hostile["out"] = hal("run", "--agent", MANY, "x", "--json",
                             env={"HAL_DISK_FILES": "2000"}, timeout=90)  # fmt: skip

    thread = threading.Thread(target=run_hostile)
    start = time.monotonic()
    thread.start()
    quiet = "sh -c 'sleep 3; echo done > quiet.txt'"
    other = hal("run", "--agent", quiet, "y", "--json", timeout=90)
    thread.join()
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["status"] == "succeeded"

    out = hostile["out"]
    assert time.monotonic() - start < 50, "stopped by the watchdog, not by the agent's sleep"
    assert out.returncode == 10, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["error_code"] == "disk_limit", task
    assert "limit of 2000" in task["error_message"] and "disk_files" in task["error_message"]
    assert "kept.txt" in Path(task["session_dir"], "result.patch").read_text()
    assert_no_leftovers(task)
