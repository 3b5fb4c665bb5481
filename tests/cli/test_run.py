"""``hal run`` end to end: a custom agent in a real bwrap sandbox under tmux."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.hal import Hal, events_of, git, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

AGENT = "sh agent.sh {{prompt_file}}"


def test_run_brings_back_branch_patch_and_events(hal: Hal, demo_repo: Path) -> None:
    out = hal("run", "--agent", AGENT, "fix the failing test")
    assert out.returncode == 0, out.stderr + out.stdout
    assert "test ok" in out.stdout  # the agent's own output was streamed
    assert "succeeded" in out.stdout and "1 changed" in out.stdout
    assert "Traceback" not in out.stderr

    [task] = tasks_json(hal)
    assert task["status"] == "succeeded" and task["exit_code"] == 0
    branch = f"hal/{task['id']}"
    assert task["branch"] == branch
    # The fix is on the branch in the source repo; main is untouched.
    assert "a + b" in git(demo_repo, "show", f"{branch}:calc.py")
    assert "a - b" in (demo_repo / "calc.py").read_text()
    # The repo's own test passes on the branch.
    tree = demo_repo.parent / "check"
    git(demo_repo, "worktree", "add", "-q", str(tree), branch)
    assert subprocess.run(["python3", "test_calc.py"], cwd=tree).returncode == 0

    patch = Path(task["session_dir"]) / "result.patch"
    assert "+    return a + b" in patch.read_text()
    diff = hal("task", "diff", task["id"][:5])
    assert diff.stdout == patch.read_text()

    events = events_of(hal, task["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "task_created" and types[-1] == "task_end"
    assert "sandbox_acquired" in types and "output" in types
    phases = [e["phase"] for e in events if e["type"] == "phase"]
    assert phases == ["provisioning", "preparing", "running", "collecting", "succeeded"]
    end = events[-1]
    assert end["status"] == "succeeded" and end["exit_code"] == 0 and end["files_changed"] == 1
    output = "".join(e["text"] for e in events if e["type"] == "output")
    assert "agent: prompt: fix the failing test" in output

    pretty = hal("task", "events", task["id"])
    assert "phase running" in pretty.stdout and "end: succeeded" in pretty.stdout
    logs = hal("task", "logs", task["id"])
    assert "test ok" in logs.stdout


def test_run_json_and_show(hal: Hal) -> None:
    out = hal("run", "--agent", AGENT, "--json", "fix it")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "succeeded" and data["files_changed"] == 1
    show = hal("task", "show", data["id"], "--json")
    assert json.loads(show.stdout)["id"] == data["id"]


def test_direct_process_manager(hal: Hal, demo_repo: Path) -> None:
    out = hal("run", "--agent", AGENT, "--process-manager", "direct", "fix it", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["process_manager"] == "direct" and task["status"] == "succeeded"
    assert "a + b" in git(demo_repo, "show", f"hal/{task['id']}:calc.py")


def test_detach_returns_at_once_and_task_finishes(hal: Hal, demo_repo: Path) -> None:
    # The agent works only once the test lets it: --detach must have returned while the task
    # still waits (a clock could not tell: a loaded machine took 5 to 7 s to start hal).
    agent = "sh -c 'while [ ! -e gate ]; do sleep 0.1; done; rm gate; sh agent.sh x'"
    out = hal("run", "--detach", "--agent", agent, "fix")
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    deadline = time.monotonic() + 40
    while (task := json.loads(hal("task", "show", task_id, "--json").stdout))[
        "status"
    ] != "running":
        assert task["status"] in ("queued", "provisioning", "preparing"), task["status"]
        assert time.monotonic() < deadline, "the detached task never ran"
        time.sleep(0.3)
    Path(task["session_dir"], "workspace", "gate").touch()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        status = json.loads(hal("task", "show", task_id, "--json").stdout)["status"]
        if status == "succeeded":
            break
        assert status not in ("failed", "interrupted", "cancelled"), status
        time.sleep(0.3)
    else:
        pytest.fail("detached task did not finish")
    assert "a + b" in git(demo_repo, "show", f"hal/{task_id}:calc.py")
    follow = hal("task", "events", task_id, "-f", "--json")
    assert json.loads(follow.stdout.splitlines()[-1])["type"] == "task_end"


def test_url_source_keeps_clone_and_bundle(hal: Hal, demo_repo: Path) -> None:
    url = f"file://{demo_repo}"
    out = hal("run", "--repo", url, "--agent", AGENT, "fix it", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    session = Path(task["session_dir"])
    assert (session / "workspace" / ".git").is_dir()
    bundle = session / "result.bundle"
    heads = subprocess.run(
        ["git", "bundle", "list-heads", str(bundle)], capture_output=True, text=True, check=True
    ).stdout
    assert f"refs/heads/hal/{task['id']}" in heads
    # A URL source is not written to.
    assert f"hal/{task['id']}" not in git(demo_repo, "branch", "--list")


def test_ref_option(hal: Hal, demo_repo: Path) -> None:
    git(demo_repo, "checkout", "-q", "-b", "other")
    (demo_repo / "other.txt").write_text("x\n")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-qm", "other")
    git(demo_repo, "checkout", "-q", "main")
    out = hal("run", "--ref", "other", "--agent", "ls -a", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert "other.txt" in Path(json.loads(out.stdout)["session_dir"], "agent.log").read_text()
