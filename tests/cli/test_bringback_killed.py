"""A ``hal run`` killed while it brings a result back: the fetched result waits in the
source repository's private ``refs/hal-incoming/<id>`` (its objects kept) until the task is
resumed, which lands it, or removed, which lets it go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.conftest import Hal, git, tasks_json

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
