"""A full disk at a host write of the collection and bring-back (the session's patch, the
record of the branch hal moved): the run ends ``failed`` with ``disk_full`` in one line
saying how to carry on (not ``interrupted`` as if hal had died), and the resume lands the
work."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import assert_no_leftovers
from tests.support.crash import AGENT, assert_repo_whole, has_work
from tests.support.hal import Hal, git, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow]

FULL = Path(__file__).with_name("full_disk_hal.py")


@pytest.mark.parametrize("name", ["result.patch", "brought-back.json"])
@pytest.mark.parametrize("changed", [True, False])
def test_a_full_disk_while_collecting_says_so_and_loses_nothing(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, name: str, changed: bool
) -> None:
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    main = git(demo_repo, "rev-parse", "main")
    # Unchanged: the empty patch is written while the bring-back's update-ref runs.
    agent = AGENT.format(pause="") if changed else "sh -c 'true'"
    done = subprocess.run(
        [sys.executable, str(FULL), name, "run", "--agent", agent, "do it"], cwd=demo_repo,
        env=hal_env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 10, done.stderr
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "hal's home is full" in out, out
    [task] = tasks_json(hal)
    assert task["status"] == "failed" and task["error_code"] == "disk_full", task
    assert f"hal task resume {task['id']}" in hal("task", "show", task["id"]).stdout
    resumed = hal("task", "resume", task["id"], env=hal_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded", task
    if changed:
        assert has_work(demo_repo, task)
    else:
        assert git(demo_repo, "rev-parse", task["branch"]) == main
    assert_no_leftovers(task)
    assert_repo_whole(demo_repo, main, incoming_ok=False)


@pytest.mark.parametrize("cause", ["EROFS", "EACCES"])
def test_a_home_hal_cannot_write_while_collecting_says_so_and_loses_nothing(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, cause: str
) -> None:
    """A read-only home (or one hal may not write) at a session file's write ended the task
    ``interrupted``, as if hal had died; it ends ``failed`` with ``home_unusable``, naming
    the file, the cause and where the work is, and the resume lands the work."""
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    main = git(demo_repo, "rev-parse", "main")
    done = subprocess.run(
        [sys.executable, str(FULL), f"result.patch:{cause}", "run", "--agent",
         AGENT.format(pause=""), "do it"],
        cwd=demo_repo, env=hal_env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "hal's home cannot be written" in out, out
    assert "result.patch" in out and os.strerror(getattr(errno, cause)) in out, out
    [task] = tasks_json(hal)
    assert task["status"] == "failed" and task["error_code"] == "home_unusable", task
    shown = hal("task", "show", task["id"]).stdout
    assert f"hal task resume {task['id']}" in shown and "session checkout" in shown, shown
    resumed = hal("task", "resume", task["id"], env=hal_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded" and has_work(demo_repo, task), task
    assert_no_leftovers(task)
    assert_repo_whole(demo_repo, main, incoming_ok=False)
