"""A ``hal run`` killed while it brings a result back: the fetched result waits in the
source repository's private ``refs/hal-incoming/<id>`` (its objects kept) until the task is
resumed, which lands it, or removed, which lets it go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.support.crash import AGENT, has_work
from tests.support.hal import Hal, git, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

# `hal ARGS...` that dies (SIGKILL, no cleanup) once the result is fetched into the private
# ref, before any branch of the user's moves.
KILLED_BEFORE_THE_BRANCH_MOVES = r"""
import os, signal, sys
from hal9999.tasks import bringback

async def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

bringback.move_branch = killed
sys.argv = ["hal", *sys.argv[1:]]
from hal9999.cli.entry import main
main()
"""


def killed_run(hal_env: dict[str, str], demo_repo: Path) -> str:
    """A task whose run died with its result in ``refs/hal-incoming/<id>``; its id."""
    done = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_THE_BRANCH_MOVES, "run", "--agent",
         "sh agent.sh {{prompt_file}}", "fix it"],
        cwd=demo_repo, env=hal_env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    refs = git(demo_repo, "for-each-ref", "--format=%(refname)", "refs/hal-incoming/")
    [ref] = refs.splitlines()
    task_id = ref.rsplit("/", 1)[1]
    assert "a + b" in git(demo_repo, "show", f"{ref}:calc.py"), "the fetched work is kept"
    assert git(demo_repo, "branch", "--list", f"hal/{task_id}") == ""
    return task_id


def test_removing_the_task_drops_its_private_ref(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    task_id = killed_run(hal_env, demo_repo)
    assert hal("task", "rm", task_id).returncode == 0
    assert git(demo_repo, "for-each-ref", "refs/hal-incoming/") == ""
    assert tasks_json(hal) == []


def test_resuming_the_task_lands_its_result_and_drops_the_ref(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    task_id = killed_run(hal_env, demo_repo)
    resumed = hal("task", "resume", task_id, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "a + b" in git(demo_repo, "show", f"hal/{task_id}:calc.py")
    assert git(demo_repo, "for-each-ref", "refs/hal-incoming/") == ""


def test_a_run_stopped_inside_its_branchs_update_leaves_no_lock(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # Ctrl-C (or the task's timeout, or a daemon's stop) while git moves `hal/<id>` in the
    # user's repository: hal kills that git, and one SIGKILLed holding the ref's lock left
    # `refs/heads/hal/<id>.lock`, so the resume's own update failed on it. The branch's
    # reflog is a FIFO here: git holds the lock while it waits to open it.
    agent = AGENT.format(pause="sleep 1; ")
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    sessions = Path(hal_env["HAL_HOME"], "sessions")
    with subprocess.Popen(
        [sys.executable, "-m", "hal9999", "run", "--agent", agent, "do it"],
        cwd=demo_repo, env=hal_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    ) as run:  # fmt: skip
        try:
            committed = wait_for(lambda: [*sessions.glob("*/workspace/.git/committed")], run)
            task_id = committed[0].parents[2].name
            reflog = demo_repo / ".git" / "logs" / "refs" / "heads" / "hal" / task_id
            reflog.parent.mkdir(parents=True)
            os.mkfifo(reflog)
            lock = demo_repo / ".git" / "refs" / "heads" / "hal" / f"{task_id}.lock"
            wait_for(lock.exists, run)
            run.send_signal(signal.SIGINT)
            assert run.wait(timeout=60) == 130, run.communicate()[1]
        finally:
            if run.poll() is None:
                run.kill()
    assert not lock.exists()
    reflog.unlink()
    resumed = hal("task", "resume", task_id, env=hal_env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded" and has_work(demo_repo, task), task


def wait_for(found: Callable[[], Any], run: subprocess.Popen[str]) -> Any:
    """``found()`` once it is true, while ``run`` lives (60 s at most)."""
    deadline = time.monotonic() + 60
    while not (value := found()):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1]
        time.sleep(0.02)
    return value
