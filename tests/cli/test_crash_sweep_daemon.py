"""``hal serve`` killed (SIGKILL) at steps of a task's path loses no work.

The daemon's half of :mod:`tests.cli.test_crash_sweep`: a task runs through a daemon that
dies at one kill point of :mod:`tests.cli.killed_hal`; ``hal task list`` tells the truth
with no daemon; the next ``hal serve`` carries the task on (adopts, queues again or leaves
it ``interrupted``, then ``hal task resume``); the agent's work lands and the user's
repository is whole, with nothing of the task left running.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import hal_processes_of
from tests.support.crash import (
    AGENT,
    IN_FLIGHT,
    KILLER,
    PAUSES,
    assert_repo_whole,
    has_work,
    killed_daemon,
    settle,
    succeeds_after_a_restart,
)
from tests.support.hal import Hal, git, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(180)]

POINTS = (
    "task_created",
    "sandbox_acquired",
    "running_recorded",
    "mid_agent",
    "agent_ended",
    "collect:committing leftover changes",
    "collect:bundling the branch",
    "fetched",
    "branch_moved",
    "landed",
    "final_status",
    "final_status_written",
    "pool_reset",
    "pool_slot_cleared",
)
"""The in-process sweep's points where a daemon's path differs (the pool's sandboxes,
recovery's adoption) or where the in-process one found the most to check."""


@pytest.mark.parametrize("point", POINTS)
def test_killed_daemon_loses_no_work(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str, reaped: None
) -> None:
    home = Path(hal_env["HAL_HOME"])
    main = git(demo_repo, "rev-parse", "main")
    task_id = killed_daemon(hal, hal_env, demo_repo, point)
    assert_repo_whole(demo_repo, main, incoming_ok=True)
    [task] = tasks_json(hal)
    assert task["status"] not in IN_FLIGHT - {"queued"}, f"nobody runs it: {task}"
    if task["status"] == "succeeded":
        assert has_work(demo_repo, task), f"succeeded without its branch: {task}"

    assert hal("serve", "--detach").returncode == 0
    try:
        task = settle(hal, task_id)
        if task["status"] == "interrupted":
            shown = hal("task", "show", task_id)
            assert f"hal task resume {task_id}" in shown.stdout, shown.stdout
            resumed = hal("task", "resume", task_id, timeout=90)
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
            task = settle(hal, task_id)
        assert task["status"] == "succeeded", task
        assert has_work(demo_repo, task), f"no branch after the restart: {task}"
    finally:
        assert hal("serve", "--stop").returncode == 0
    assert_repo_whole(demo_repo, main, incoming_ok=False)
    assert hal_processes_of(task) == []
    assert list((home / "sandboxes").glob("*/*")) == [], "the restart swept every sandbox"


@pytest.mark.parametrize(
    "point", ["mid_agent", "collect:committing leftover changes", "fetched", "final_status_written"]
)
def test_a_killed_run_is_carried_on_by_the_next_daemon(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str, reaped: None
) -> None:
    # A `hal run` killed in-process: no resume by hand, the next `hal serve` recovers it
    # (adopts its agent or its ended run, collects, lands) and sweeps its sandbox.
    home = Path(hal_env["HAL_HOME"])
    agent = AGENT.format(pause=PAUSES.get(point, ""))
    done = subprocess.run(
        [sys.executable, str(KILLER), point, "run", "--agent", agent, "do it"],
        cwd=demo_repo, env={**hal_env, "HAL_NO_DAEMON": "1"}, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    [task] = tasks_json(hal)
    assert hal("serve", "--detach").returncode == 0
    try:
        task = settle(hal, task["id"])
        assert task["status"] == "succeeded", task
        assert has_work(demo_repo, task)
    finally:
        assert hal("serve", "--stop").returncode == 0
    assert git(demo_repo, "for-each-ref", "refs/hal-incoming/") == ""
    assert hal_processes_of(task) == []
    assert list((home / "sandboxes").glob("*/*")) == [], "the daemon swept every sandbox"


@pytest.mark.parametrize("point", ["sandbox_acquired", "preparing"])
def test_a_task_listed_before_the_next_daemon_is_queued_again_by_it(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str, reaped: None
) -> None:
    # A daemon killed before the agent started; `hal task list` (the user looking) marks
    # the task interrupted ("the agent had not started") before `hal serve` is started
    # again. That daemon queues it again and runs it, as it does one nobody listed: it
    # was left interrupted, to be resumed by hand.
    main = git(demo_repo, "rev-parse", "main")
    task_id = killed_daemon(hal, hal_env, demo_repo, point)
    [task] = tasks_json(hal)
    assert task["status"] == "interrupted", task
    assert "the agent had not started" in task["error_message"], task
    task = succeeds_after_a_restart(hal, demo_repo, task_id, main)
    assert task["infra_retries"] == 1, "queued again by the next daemon"
