"""``hal serve --stop`` leaves the sandbox of a running agent running (the agent keeps
running, the next start adopts it): without the daemon, ``hal sandbox list`` says whose it
is, as the daemon would, not an orphan's ``pool - task -``."""

from __future__ import annotations

import json

import pytest
from tests.support.daemon import wait_status
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(600)]
SLEEPER = "sh -c 'sleep 600' {{prompt_file}}"


def test_a_sandbox_serve_stop_leaves_running_names_its_task(hal: Hal) -> None:
    assert hal("serve", "--detach").returncode == 0
    task_id = hal("run", "--detach", "--agent", SLEEPER, "x").stdout.strip()
    try:
        wait_status(hal, task_id, {"running"}, timeout=120)
        assert hal("serve", "--stop").returncode == 0
        listed = hal("sandbox", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert (row["state"], row["pool"], row["task_id"]) == ("running", "leased", task_id)
    finally:
        # The next start adopts the run; its cancel ends the agent and gives the sandbox back.
        assert hal("serve", "--detach").returncode == 0
        hal("task", "cancel", task_id, timeout=240)
        assert hal("serve", "--stop").returncode == 0
    assert json.loads(hal("sandbox", "list", "--json").stdout) == []
