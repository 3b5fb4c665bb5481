"""A summary names a task's branch only once it was made (a task whose ``--ref``
does not exist failed with ``branch hal/<id>`` printed, a branch no repository held)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from tests.support.hal import Hal, git, tasks_json

from hal9999.cli.task_table import BRANCH_MARKS, TaskSummary, branch_shown
from hal9999.tasks.session import Session

AGENT = ("--agent", "sh agent.sh {{prompt_file}}")


def branch_line(out: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith("branch ")]
    return line


def test_a_task_whose_ref_does_not_exist_says_no_branch_was_made(hal: Hal, demo_repo: Path) -> None:
    out = hal("run", *AGENT, "--ref", "no-such-branch", "x")
    assert out.returncode == 4, out.stderr + out.stdout
    said = "branch    none: no branch was made (the task failed before its work was brought back)"
    assert branch_line(out.stdout) == said
    [task] = tasks_json(hal)
    assert branch_line(hal("task", "show", task["id"]).stdout) == said
    assert git(demo_repo, "branch", "--list", "hal/*") == ""


def test_a_task_that_brought_its_work_back_names_its_branch(hal: Hal, demo_repo: Path) -> None:
    out = hal("run", *AGENT, "x")
    assert out.returncode == 0, out.stderr + out.stdout
    [task] = tasks_json(hal)
    assert branch_line(out.stdout) == f"branch    {task['branch']}"
    assert git(demo_repo, "branch", "--list", task["branch"]).strip() == task["branch"]


def test_the_marks_are_the_sessions_own_files(tmp_path: Path) -> None:
    session = Session(tmp_path)
    assert tmp_path / BRANCH_MARKS["local"] == session.brought_back
    assert tmp_path / BRANCH_MARKS["url"] == session.bundle


@pytest.mark.parametrize(
    ("status", "kind", "made", "said"),
    [
        ("cancelled", "local", False,
         "none: no branch was made (the task was cancelled before its work was brought back)"),
        ("timed_out", "url", False,
         "none: no branch was made (the task timed out before its work was brought back)"),
        ("running", "local", False,
         "none yet (hal/t is made when the task's work is brought back)"),
        ("stopped", "url", False,
         "none yet (hal/t is made when the task's work is brought back)"),
        ("failed", "url", True, "hal/t"),
        ("failed", "local", True, "hal/t"),
    ],
)  # fmt: skip
def test_each_state_says_whether_the_branch_exists(
    tmp_path: Path, status: str, kind: str, made: bool, said: str
) -> None:
    if made:
        mark = tmp_path / BRANCH_MARKS[kind]
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    # The other kind's mark proves nothing: a local source's bundle was not brought back.
    other = tmp_path / BRANCH_MARKS["url" if kind == "local" else "local"]
    other.parent.mkdir(parents=True, exist_ok=True)
    other.touch()
    task = SimpleNamespace(
        status=status, repo_kind=kind, branch="hal/t", session_dir=str(tmp_path),
        created_at=time.time(),
    )  # fmt: skip
    assert branch_shown(cast(TaskSummary, task)) == said
