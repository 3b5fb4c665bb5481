"""``hal serve`` killed -9 between a task's ``running`` and its agent's start under the
``direct`` and ``pm2`` managers: nothing of the agent ran, so the next
daemon queues the task again (an infra retry) and it succeeds with no resume by hand, as
under tmux (whose prestarted supervisor says so)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pm2_home import end, new_home
from tests.support.crash import killed_daemon, succeeds_after_a_restart
from tests.support.hal import Hal, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(params=["direct", pytest.param("pm2", marks=pytest.mark.pm2)])
def managed(request: pytest.FixtureRequest, hal_env: dict[str, str]) -> Iterator[str]:
    """``hal_env`` set to run agents under the manager (PM2: a daemon of the test's own)."""
    hal_env["HAL_PROCESS_MANAGER"] = request.param
    if request.param != "pm2":
        yield request.param
        return
    home = new_home()
    hal_env["HAL_PM2_HOME"] = str(home)
    try:
        yield request.param
    finally:
        asyncio.run(end(home))


@pytest.mark.parametrize("point", ["running_recorded", "supervisor_made"])
def test_a_run_killed_before_its_agent_started_is_queued_again(
    managed: str, hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str, reaped: None
) -> None:
    main = git_main(demo_repo)
    task_id = killed_daemon(hal, hal_env, demo_repo, point)  # listed: reconciled by a hal
    [task] = tasks_json(hal)
    assert task["status"] == "interrupted", task
    assert "the agent had not started" in task["error_message"], task

    # Before: `interrupted` ("the agent may still be running"), for a resume by hand.
    task = succeeds_after_a_restart(hal, demo_repo, task_id, main)
    assert task["infra_retries"] == 1, "queued again by the next daemon"


def test_a_run_killed_after_its_supervisor_took_the_mark_is_carried_on(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, reaped: None
) -> None:
    # Direct: the supervisor renamed the mark to the pid file, then hal died before writing
    # the pid into it. An empty pid file left the task `interrupted` with a
    # supervisor nobody could stop or adopt; the supervisor's own pid now names it.
    hal_env["HAL_PROCESS_MANAGER"] = "direct"
    home = Path(hal_env["HAL_HOME"])
    main = git_main(demo_repo)
    task_id = killed_daemon(hal, hal_env, demo_repo, "supervisor_claimed")
    [pid_file] = home.rglob(".exit-0.pid")
    assert int(pid_file.read_text()) > 0, "the pid file names the supervisor"

    # Before: `interrupted` ("the agent may still be running"), its agent out of reach.
    task = succeeds_after_a_restart(hal, demo_repo, task_id, main)
    assert task["infra_retries"] == 0, "its agent ran once, adopted by the next daemon"


def git_main(repo: Path) -> str:
    from tests.support.hal import git

    return git(repo, "rev-parse", "main")
