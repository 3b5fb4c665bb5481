"""More moments to kill ``hal run`` at (:mod:`tests.cli.test_crash_sweep`'s checks).

An agent that changes nothing (its result brought back while the session's empty patch is
written, the two overlapping) killed at each step of its collection and bring-back; and a
``hal task resume`` killed at each step of the run it carries on, then resumed again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import assert_no_leftovers, hal_processes_of
from tests.support.crash import AGENT, IN_FLIGHT, KILLER, assert_repo_whole, has_work, killed_run
from tests.support.hal import Hal, git, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(120)]

UNCHANGED = (
    "agent_ended",
    "collecting",
    "collect:reading the changes",
    "collect:updating the branch",
    "git_update_ref_running",
    "patch_writing",
    "branch_moved",
    "landed",
    "collected",
    "brought_back",
    "final_status",
)


def run_killed(hal_env: dict[str, str], repo: Path, point: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(KILLER), point, *args], cwd=repo, env=hal_env,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == -9, f"never reached {point}: {done.stderr}"


def halted_half_way(
    hal: Hal, hal_env: dict[str, str], repo: Path, action: str, pause: str = "sleep 60; "
) -> dict[str, Any]:
    """A run killed while its agent works, then ``hal task <action>`` (stop or cancel) killed
    once it has recorded its state: the task, its agent still running in its sandbox."""
    run_killed(hal_env, repo, "mid_agent", "run", "--agent", AGENT.format(pause=pause), "do it")
    [task] = tasks_json(hal)
    state = {"stop": "stopped", "cancel": "cancelled"}[action]
    run_killed(hal_env, repo, f"{action}_recorded", "task", action, task["id"])
    [task] = tasks_json(hal)
    assert task["status"] == state, task
    assert hal_processes_of(task) != [], f"the {action} died before it stopped the agent"
    return task


def carried_on(hal: Hal, hal_env: dict[str, str], task: dict[str, object]) -> dict[str, object]:
    """The task after the next ``hal task resume`` (if it needs one): succeeded, nothing of
    it left (killed once succeeded: no process, its sandbox's state left to `hal serve`)."""
    assert task["status"] not in IN_FLIGHT - {"queued"}, f"nobody runs it: {task}"
    if task["status"] == "succeeded":
        assert task["sandbox_id"] is None and hal_processes_of(task) == []
    else:
        assert task["status"] in ("queued", "interrupted"), task
        shown = hal("task", "show", str(task["id"]))
        assert f"hal task resume {task['id']}" in shown.stdout, shown.stdout
        resumed = hal("task", "resume", str(task["id"]), env=hal_env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        [task] = tasks_json(hal)
        assert task["status"] == "succeeded", task
        assert_no_leftovers(task)
    return task


def resumed_again_after(
    hal: Hal, hal_env: dict[str, str], repo: Path, main: str, point: str, task_id: str
) -> None:
    """``hal task resume`` of the task dies at ``point``; the repository stays whole, and the
    task carries on (resumed again if it needs it) to its work on its branch."""
    run_killed(hal_env, repo, point, "task", "resume", task_id)
    assert_repo_whole(repo, main, incoming_ok=True)
    [task] = tasks_json(hal)
    task = carried_on(hal, hal_env, task)
    assert has_work(repo, task), f"resumed without its branch: {task}"
    assert_repo_whole(repo, main, incoming_ok=False)


@pytest.mark.parametrize("point", UNCHANGED)
def test_killed_run_of_an_unchanged_result_ends_right(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str
) -> None:
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    main = git(demo_repo, "rev-parse", "main")
    agent = "sh -c 'git checkout -q --detach; true'" if "updating" in point else "sh -c 'true'"
    run_killed(hal_env, demo_repo, point, "run", "--agent", agent, "do nothing")
    assert_repo_whole(demo_repo, main, incoming_ok=True)
    [task] = tasks_json(hal)
    if point.startswith("collect:"):
        assert Path(task["session_dir"], "workspace", ".git", "index.lock").exists()
    task = carried_on(hal, hal_env, task)
    assert git(demo_repo, "rev-parse", str(task["branch"])) == main
    patch = Path(str(task["session_dir"]), "result.patch")
    assert patch.read_bytes() == b"", "the empty patch is written"
    assert not Path(str(task["session_dir"]), "result.bundle").exists()
    assert_repo_whole(demo_repo, main, incoming_ok=False)


RESUME_POINTS = (
    "task_created",
    "mid_agent",
    "agent_ended",
    "collecting",
    "collect:committing leftover changes",
    "collected",
    "git_update_ref_running",
    "branch_moved",
    "landed",
    "final_status",
    "final_status_written",
)


@pytest.mark.parametrize("point", RESUME_POINTS)
def test_a_killed_resume_is_resumed_again(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str
) -> None:
    """The run dies while its agent works; its resume dies at ``point``; the next resume
    lands the agent's work (committed and left uncommitted) all the same."""
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    main = git(demo_repo, "rev-parse", "main")
    killed_run(hal_env, demo_repo, "mid_agent", False)
    [task] = tasks_json(hal)
    assert task["status"] == "interrupted", task
    resumed_again_after(hal, hal_env, demo_repo, main, point, str(task["id"]))


@pytest.mark.parametrize("stop_again", [False, True])
def test_a_stop_killed_before_it_stopped_the_agent_leaves_no_second_run(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, stop_again: bool
) -> None:
    """The run dies while its agent works; ``hal task stop`` dies once it has recorded
    ``stopped``, the agent still running in its sandbox over the workspace. Another stop
    stops it; a resume stops it first (never two runs on one workspace) and lands the work."""
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    main = git(demo_repo, "rev-parse", "main")
    # The first run sleeps (still running when its stop dies), the resumed one does not.
    again = "test -e .git/again || { : > .git/again; sleep 60; }; "
    task = halted_half_way(hal, hal_env, demo_repo, "stop", pause=again)
    if stop_again:
        stopped = hal("task", "stop", task["id"], env=hal_env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        [task] = tasks_json(hal)
        assert task["status"] == "stopped", task
        assert_no_leftovers(task)
    resumed = hal("task", "resume", task["id"], env=hal_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded", task
    assert has_work(demo_repo, task), f"resumed without its branch: {task}"
    assert_no_leftovers(task)
    assert_repo_whole(demo_repo, main, incoming_ok=False)


def test_an_agent_a_killed_stop_left_running_is_ended_by_the_next_daemon(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, reaped: None
) -> None:
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    task = halted_half_way(hal, hal_env, demo_repo, "stop")
    assert hal("serve", "--detach").returncode == 0
    try:
        [task] = tasks_json(hal)
        assert task["status"] == "stopped", task
        assert_no_leftovers(task)
    finally:
        assert hal("serve", "--stop").returncode == 0
    home = Path(hal_env["HAL_HOME"])
    assert list((home / "sandboxes").glob("*/*")) == [], "the daemon swept every sandbox"


@pytest.mark.parametrize("point", ["task_created", "running_recorded", "mid_agent", "collected"])
def test_a_killed_resume_of_a_stopped_task_is_resumed_again(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str
) -> None:
    """A stopped task's resume (a new run of its agent over the workspace) dies at ``point``;
    the next resume lands the work of both runs."""
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    main = git(demo_repo, "rev-parse", "main")
    killed_run(hal_env, demo_repo, "mid_agent", False)
    [task] = tasks_json(hal)
    assert hal("task", "stop", task["id"], env=hal_env).returncode == 0
    resumed_again_after(hal, hal_env, demo_repo, main, point, str(task["id"]))


def test_a_cancel_killed_before_it_stopped_the_agent_is_finished_by_the_next(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    """``hal task cancel`` dies once it has recorded ``cancelled``, the agent still running:
    the next hal command ends it (``hal task list`` destroys the sandbox a
    dead run left to a final task: tasks/deadruns.py); cancelling again, with nothing left
    to end, says so in one line."""
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    run_killed(hal_env, demo_repo, "mid_agent", "run", "--agent", AGENT.format(pause="sleep 60; "),
               "do it")  # fmt: skip
    [task] = tasks_json(hal)
    run_killed(hal_env, demo_repo, "cancel_recorded", "task", "cancel", task["id"])
    assert hal_processes_of(task) != [], "the cancel died before it stopped the agent"
    [task] = tasks_json(hal)
    assert task["status"] == "cancelled", task
    assert_no_leftovers(task)
    again = hal("task", "cancel", task["id"], env=hal_env)
    assert again.returncode != 0 and "a cancelled task cannot become cancelled" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    [task] = tasks_json(hal)
    assert (task["status"], task["sandbox_id"]) == ("cancelled", None), task
    assert_no_leftovers(task)
