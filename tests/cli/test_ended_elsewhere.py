"""A foreground ``hal run`` whose task another command stops, cancels or removes says so in a
line of its own, with its own status (9, 130, 3), on both paths: before, it exited 1, 4 or 5
with no line, or with a hint naming the removed session."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(240)]
AGENT = "sh -c 'sleep 120' {{prompt_file}}"


def running_id(hal: Hal) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = json.loads(hal("task", "list", "--json").stdout)
        if tasks and tasks[0]["status"] == "running":
            return str(tasks[0]["id"])
        time.sleep(0.2)
    pytest.fail("the task never ran")


@pytest.mark.parametrize(
    ("command", "status", "said"),
    [
        (("task", "stop"), 9, "was stopped by another command (`hal task stop`)"),
        (("task", "cancel"), 130, "was cancelled by another command"),
        # Cancelled first; removed too by the time the run asks for its end, at times.
        (("task", "rm", "--force"), (130, 3), "by another command"),
    ],
    ids=["stop", "cancel", "rm"],
)
def test_a_run_ended_by_another_command_says_so(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, cli_path: str,
    command: tuple[str, ...], status: int | tuple[int, ...], said: str,
) -> None:  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-m", "hal9999", "run", "--agent", AGENT, "x"], cwd=demo_repo,
        env=hal_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as run:  # fmt: skip
        try:
            task_id = running_id(hal)
            done = hal(*command, task_id)
            assert done.returncode == 0, done.stderr
            _, err = run.communicate(timeout=120)
        finally:
            run.kill()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if said in line]
    assert len(lines) == 1 and lines[0].startswith(f"hal: task {task_id} "), err
    assert run.returncode in (status if isinstance(status, tuple) else (status,)), err
