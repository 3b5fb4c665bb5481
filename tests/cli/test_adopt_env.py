"""A ``hal run`` given a literal ``--env NAME=value`` (or a forwarded variable the daemon's
environment lacks) is killed while its agent runs; a ``hal serve`` started afterwards adopts
the live agent and sees it to its end: an adoption needs none of the task's values (a
daemon never has them: they are not stored)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.support.adoption import AGENT, wait_until
from tests.support.cli import assert_no_leftovers, wait_for_status
from tests.support.hal import Hal, git, start_hal, tasks_now

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(300)]


@pytest.mark.parametrize("given", ["literal", "forwarded"])
def test_a_daemon_started_after_a_crash_adopts_a_run_given_values(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, given: str
) -> None:
    alone = {**hal_env, "HAL_NO_DAEMON": "1"}
    if given == "literal":
        env_args = ["--env", "GREETING=hello-from-the-caller"]
    else:  # set in the caller's shell only, never the daemon's
        alone["GREETING"] = "hello-from-the-shell"
        env_args = ["--env", "GREETING"]
    runner = start_hal(alone, demo_repo, "run", *env_args, "--agent", AGENT, "work")
    task = wait_for_status(hal, "running")
    log = Path(str(task["session_dir"]), "agent.log")
    wait_until(lambda: log.exists() and "agent-started" in log.read_text(), "the agent")
    runner.kill()
    runner.communicate()
    task_id = str(task["id"])

    assert "GREETING" not in hal_env
    assert hal("serve", "--detach").returncode == 0
    try:
        daemon_pid = json.loads(Path(hal_env["HAL_HOME"], "run", "serve.json").read_text())["pid"]
        wait_until(lambda: tasks_now(hal)[0]["runner_pid"] == daemon_pid, "the adoption", 60)
        Path(str(task["session_dir"]), "workspace", "go").touch()
        deadline = time.monotonic() + 120
        while (final := tasks_now(hal)[0])["status"] in ("running", "collecting"):
            assert time.monotonic() < deadline, f"the adopted run never ended: {final}"
            time.sleep(0.3)
    finally:
        assert hal("serve", "--stop").returncode == 0
    assert final["status"] == "succeeded", (final["status"], final["error_message"])
    assert git(demo_repo, "show", f"hal/{task_id}:late.txt") == "late"
    assert_no_leftovers(final)


def test_an_in_process_resume_adopts_without_the_runs_values(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    alone = {**hal_env, "HAL_NO_DAEMON": "1"}
    runner = start_hal(alone, demo_repo, "run", "--env", "GREETING=hello", "--agent", AGENT,
                       "work")  # fmt: skip
    task = wait_for_status(hal, "running")
    log = Path(str(task["session_dir"]), "agent.log")
    wait_until(lambda: log.exists() and "agent-started" in log.read_text(), "the agent")
    runner.kill()
    runner.communicate()
    task_id = str(task["id"])
    # This shell gives no GREETING: the live agent has it, the adoption needs none.
    resumer = start_hal(alone, demo_repo, "task", "resume", task_id, "--json")
    wait_until(lambda: tasks_now(hal)[0]["runner_pid"] == resumer.pid, "the adoption", 60)
    Path(str(task["session_dir"]), "workspace", "go").touch()
    out, err = resumer.communicate(timeout=120)
    assert resumer.returncode == 0, err
    final = json.loads(out)
    assert final["status"] == "succeeded" and final["resumes"] == 0, final
    assert git(demo_repo, "show", f"hal/{task_id}:late.txt") == "late"
    assert_no_leftovers(final)
