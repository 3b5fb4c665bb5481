"""Every failure gives one clear line, never a traceback, and keeps the session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.cli import assert_no_leftovers, hal_processes_of, wait_for_status
from tests.support.hal import Hal, one_error_line, start_hal, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


def test_bad_repo_path(hal: Hal, tmp_path: Path) -> None:
    out = hal("run", "--repo", str(tmp_path / "nope"), "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 4
    assert "does not exist" in one_error_line(out) and "--repo" in out.stderr


def test_not_a_git_repo(hal: Hal, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    out = hal("run", "--agent", "true {{prompt_file}}", "x", cwd=plain)
    assert out.returncode == 4
    assert "not a git repository" in one_error_line(out)


def test_bad_url_fails_task_and_says_so(hal: Hal, tmp_path: Path) -> None:
    out = hal(
        "run", "--repo", f"file://{tmp_path}/missing.git", "--agent", "true {{prompt_file}}", "x"
    )
    assert out.returncode == 4, out.stderr
    assert "cloning" in out.stdout and "failed" in out.stdout
    [task] = tasks_json(hal)
    assert task["status"] == "failed" and task["error_code"] == "repo_invalid"


def test_unknown_agent(hal: Hal) -> None:
    out = hal("run", "--agent", "nosuchagent", "x")
    assert out.returncode == 5
    line = one_error_line(out)
    assert "nosuchagent" in line and "claude" in line
    assert tasks_json(hal) == []


def test_agent_binary_missing(hal: Hal) -> None:
    out = hal("run", "--agent", "no-such-program-xyz {{prompt_file}}", "x", "--json")
    assert out.returncode == 5
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["error_code"] == "agent_missing"
    assert "no-such-program-xyz" in task["error_message"]
    assert Path(task["session_dir"], "workspace", "calc.py").exists()


def test_agent_crash(hal: Hal) -> None:
    out = hal("run", "--agent", "sh -c 'echo dying; exit 3'", "x", "--json")
    assert out.returncode == 5
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["exit_code"] == 3
    assert task["error_code"] == "agent_failed"
    assert "dying" in Path(task["session_dir"], "agent.log").read_text()


def test_timeout(hal: Hal) -> None:
    # The agent sleeps an hour: hal returning within its (generous) 90 s ended it at 2 s.
    out = hal(
        "run", "--agent", "sh -c 'echo edit > new.txt; sleep 3600'", "--timeout", "2", "x",
        "--json", timeout=90,
    )  # fmt: skip
    assert out.returncode == 124, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "timed_out" and task["error_code"] == "timed_out"
    # Work done before the timeout is kept and collected.
    assert "new.txt" in Path(task["session_dir"], "result.patch").read_text()
    assert_no_leftovers(task)


def test_ctrl_c_cancels_cleanly(hal: Hal, hal_env: dict[str, str], demo_repo: Path) -> None:
    proc = start_hal(hal_env, demo_repo, "run", "--agent", "sleep 60", "wait")
    task = wait_for_status(hal, "running")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "cancelled" in err and "Traceback" not in err
    [task] = tasks_json(hal)
    assert task["status"] == "cancelled" and task["sandbox_id"] is None
    assert Path(task["session_dir"], "workspace", "calc.py").exists()
    assert_no_leftovers(task)


def test_kill_9_then_list_tells_truth_and_stop_cleans(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    agent = "sh -c 'test -f done.txt && exit 0; touch done.txt; sleep 60'"
    proc = start_hal(hal_env, demo_repo, "run", "--agent", agent, "wait")
    wait_for_status(hal, "running")
    proc.kill()
    proc.communicate()
    [task] = tasks_json(hal)
    assert task["status"] == "interrupted"
    assert "still be running" in task["error_message"]
    assert hal_processes_of(task), "the agent survives in tmux until stopped"

    stop = hal("task", "stop", task["id"])
    assert stop.returncode == 0, stop.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "stopped"
    assert_no_leftovers(task)

    resumed = hal("task", "resume", task["id"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["status"] == "succeeded" and final["resumes"] == 1
    assert "done.txt" in Path(final["session_dir"], "result.patch").read_text()


def supervisor_of(task: dict[str, object]) -> int | None:
    """The pid of the supervisor of the task's agent (it records the agent's exit status):
    the one writing the task's log (a warm pane's names only its FIFO in its argv)."""
    log = str(Path(str(task["session_dir"]), "agent.log"))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # Not the tmux server, whose command line holds the supervisor's too.
            if not any(b"process.supervisor" in arg for arg in argv[:5]):
                continue
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if log in fds:
            return int(pid)
    return None


def test_an_agent_whose_supervisor_died_has_its_work_brought_back(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The supervisor (killed by the OOM killer, or kill -9) records no exit status: the run
    # fails, but what the agent did is collected like after a timeout, and nothing of the
    # agent, which its supervisor no longer stops, outlives the run.
    agent = "sh -c 'echo edit > new.txt; sleep 60'"
    proc = start_hal(hal_env, demo_repo, "run", "--agent", agent, "x", "--json")
    task = wait_for_status(hal, "running")
    workspace = Path(str(task["session_dir"]), "workspace")
    deadline = time.monotonic() + 30
    while not (workspace / "new.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = supervisor_of(task)
    assert pid is not None, "the agent runs under its supervisor"
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    task = json.loads(out)
    assert task["status"] == "failed" and task["error_code"] == "agent_failed", task
    assert "without an exit status" in str(task["error_message"])
    assert "new.txt" in Path(str(task["session_dir"]), "result.patch").read_text()
    shown = subprocess.run(
        ["git", "show", f"{task['branch']}:new.txt"], cwd=demo_repo, capture_output=True, text=True
    )
    assert shown.stdout == "edit\n", shown.stderr
    assert_no_leftovers(task)


def test_stop_and_cancel_a_detached_task(hal: Hal) -> None:
    out = hal("run", "--detach", "--agent", "sleep 60", "wait")
    task_id = out.stdout.strip()
    wait_for_status(hal, "running")
    assert hal("task", "cancel", task_id).returncode == 0
    [task] = tasks_json(hal)
    assert task["status"] == "cancelled"
    assert_no_leftovers(task)
    again = hal("task", "cancel", task_id)
    assert again.returncode == 9 and "cannot become" in one_error_line(again)


def test_unknown_and_ambiguous_task_ids(hal: Hal) -> None:
    out = hal("task", "show", "zzzzzzzz")
    assert out.returncode == 3 and "hal task list" in one_error_line(out)


def test_rm_removes_session(hal: Hal) -> None:
    out = hal("run", "--agent", "true {{prompt_file}}", "x", "--json")
    task = json.loads(out.stdout)
    assert hal("task", "rm", task["id"]).returncode == 0
    assert not Path(task["session_dir"]).exists()
    assert tasks_json(hal) == []


def test_api_agent_without_network_is_warned_about(hal: Hal, hal_env: dict[str, str]) -> None:
    # A preset whose program is `false` stands in for an agent that cannot reach its API.
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('network = "none"\n[agents.claude]\ncommand = "false"\n')
    out = hal("run", "--agent", "claude", "x", env={"ANTHROPIC_API_KEY": ""})
    assert out.returncode == 5, out.stderr
    # The failure says what to change: the key the gateway lacks, not the sandbox's network.
    assert "export ANTHROPIC_API_KEY=..." in out.stdout
    [task] = tasks_json(hal)
    assert task["status"] == "failed" and "has no API key" in task["error_message"]
    events = [
        json.loads(line)
        for line in hal("task", "events", task["id"], "--json").stdout.split("\n")
        if line
    ]
    warnings = [e["text"] for e in events if e["type"] == "message" and e["level"] == "warning"]
    assert len(warnings) == 1 and "ANTHROPIC_API_KEY is not set" in warnings[0]


def test_custom_agent_without_network_is_not_warned_about(hal: Hal) -> None:
    out = hal("run", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 0, out.stderr
    [task] = tasks_json(hal)
    events = hal("task", "events", task["id"], "--json").stdout
    assert '"level":"warning"' not in events.replace(" ", "")
