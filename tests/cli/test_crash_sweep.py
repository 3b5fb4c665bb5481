"""A ``hal run`` killed (SIGKILL) at every step of a task's path loses no work.

For each kill point of :mod:`tests.cli.killed_hal`, in order: the run dies there; the next
``hal task list`` tells the truth (no task shown in flight with nobody running it, none shown
succeeded without its branch); ``hal task show`` says how to carry on; ``hal task resume``
(when the task is not over) lands the agent's work, a commit it made and a file it left
uncommitted, on the result branch; and the user's repository is whole throughout: ``git fsck``
passes, no lock file, HEAD and the checkout untouched, no private ref left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.cli.killed_hal import POINTS, SLOW_GIT
from tests.support.cli import assert_no_leftovers, hal_processes_of
from tests.support.crash import IN_FLIGHT, KILLER, SECRET, assert_repo_whole, has_work, killed_run
from tests.support.hal import Hal, git, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow]


QUARANTINED = ("git_fetch_running", "fetched", "kept_quarantine", "branch_moved")
"""The bring-back's points again for a task with a secret: its result waits in a quarantine
of the session's until the scan, and moves into the source with the branch's own update."""
ELSEWHERE = ("kept_quarantine", "patch_writing", "stop_recorded")  # tested elsewhere
ELSEWHERE += ("pool_reset", "pool_slot_cleared", "cancel_recorded", "failed_written")
ELSEWHERE += ("pool_created_unrecorded", "pool_recorded", "pool_destroying")
ELSEWHERE += ("bwrap_destroyed", "supervisor_made")  # supervisor_made: direct and PM2 only
ELSEWHERE += ("supervisor_claimed",)  # direct only: test_unstarted_managers.py
SWEEP = [(point, False) for point in POINTS if point not in ELSEWHERE] + [
    (point, True) for point in QUARANTINED
]


@pytest.mark.parametrize(
    ("point", "secret"), SWEEP, ids=[f"{p}{'+secret' if s else ''}" for p, s in SWEEP]
)
def test_killed_run_loses_no_work(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str, secret: bool
) -> None:
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1", **(SECRET if secret else {})}
    main = git(demo_repo, "rev-parse", "main")
    killed_run(hal_env, demo_repo, point, secret)
    assert_repo_whole(demo_repo, main, incoming_ok=True)

    [task] = tasks_json(hal)
    if point.startswith("collect:"):  # the script was killed at that step, not after it all
        assert Path(task["session_dir"], "workspace", ".git", "index.lock").exists()
    assert task["status"] not in IN_FLIGHT - {"queued"}, f"nobody runs it: {task}"
    if task["status"] == "succeeded":
        assert has_work(demo_repo, task), f"succeeded without its branch: {task}"
        # Killed between its final status and its sandbox's release: the sandbox's state
        # directory is left for `hal serve`'s sweep of orphans (no process, no record).
        assert task["sandbox_id"] is None and hal_processes_of(task) == []
    else:
        assert task["status"] in ("queued", "interrupted"), task
        shown = hal("task", "show", task["id"])
        assert shown.returncode == 0, shown.stderr
        assert f"hal task resume {task['id']}" in shown.stdout, shown.stdout
        resumed = hal("task", "resume", task["id"], env=hal_env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        [task] = tasks_json(hal)
        assert task["status"] == "succeeded", task
        assert has_work(demo_repo, task), f"resumed without its branch: {task}"
        assert_no_leftovers(task)
    assert_repo_whole(demo_repo, main, incoming_ok=False)


def clone_leftovers(task: dict[str, Any]) -> list[str]:
    """Live processes of killed_hal's slowed git working in the task's session."""
    session = task["session_dir"]
    found = []
    for entry in Path("/proc").iterdir():
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except (OSError, ValueError):
            continue
        if str(SLOW_GIT) in line and (cwd.startswith(session) or session in line):
            found.append(line)
    return found


def test_a_clone_running_when_hal_dies_dies_with_it(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The clone's git is hal's child (its own session): left running, it would write into
    # the checkout that the resume empties and clones again.
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    killed_run(hal_env, demo_repo, "clone_running", False)
    [task] = tasks_json(hal)
    deadline = time.monotonic() + 3  # SIGKILLed as hal exits: gone within moments
    while clone_leftovers(task) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert clone_leftovers(task) == []
    resumed = hal("task", "resume", task["id"], env=hal_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded", task
    assert has_work(demo_repo, task)


@pytest.mark.parametrize("point", ["branch_moved", "git_update_ref_running"])
def test_a_run_killed_once_its_branch_moved_is_resumed_onto_the_same_branch(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str
) -> None:
    # Its agent run again with a new prompt (a new commit each run): the branch the killed
    # run moved is this task's own, moved on, not "changed outside hal" and set aside.
    agent = "sh -c 'date +%s%N >> h; git add h; git -c user.name=a -c user.email=a@a commit -qm y'"
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    done = subprocess.run(
        [sys.executable, str(KILLER), point, "run", "--agent", agent, "do it"],
        cwd=demo_repo, env=hal_env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    [task] = tasks_json(hal)
    resumed = hal("task", "resume", task["id"], "once more", env=hal_env)
    assert resumed.returncode == 0, resumed.stderr
    [task] = tasks_json(hal)
    assert (task["status"], task["branch"]) == ("succeeded", f"hal/{task['id']}"), task
    subjects = git(demo_repo, "log", "--format=%s", f"main..{task['branch']}").splitlines()
    assert subjects == ["y", "y"], subjects
    assert git(demo_repo, "branch", "--list", "hal/*").split() == [task["branch"]]
