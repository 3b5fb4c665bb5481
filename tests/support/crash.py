"""A runner killed mid-task and the crash sweep that must leave its repository whole."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import hal_processes_of
from tests.support.hal import Hal, git, tasks_json

KILLER = Path(__file__).parents[1] / "cli" / "killed_hal.py"


SECRET = {"HAL_TEST_TOKEN": "s3cr3t-Value-77"}


# Commits ``f``, leaves ``g`` uncommitted; the marker in .git says the commit is made.
AGENT = (
    "sh -c 'echo hi > f; git add f; git -c user.name=a -c user.email=a@a commit -qm x; "
    ": > .git/committed; {pause}echo more > g'"
)


IN_FLIGHT = {"queued", "provisioning", "preparing", "running", "collecting"}


PAUSES = {
    "mid_agent": "sleep 1; ",
    "supervisor_claimed": "sleep 5; ",
    "collect:updating the branch": "git checkout -q --detach; ",
}
"""What the agent does before its last file at some points: runs on a little while hal dies
(still running when the next daemon looks, after a kill at its start); leaves HEAD detached
(else the branch is HEAD and collection has no branch to update)."""


def killed_run(hal_env: dict[str, str], repo: Path, point: str, secret: bool) -> None:
    """``hal run`` of :data:`AGENT`, killed at ``point``."""
    agent = AGENT.format(pause=PAUSES.get(point, ""))
    extra = ["--secret", *SECRET] if secret else []
    done = subprocess.run(
        [sys.executable, str(KILLER), point, "run", *extra, "--agent", agent, "do it"],
        cwd=repo, env={**hal_env, **(SECRET if secret else {})}, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == -9, f"never reached {point}: {done.stderr}"


def has_work(repo: Path, task: dict[str, Any]) -> bool:
    """Whether the task's branch holds the agent's commit and its uncommitted file."""
    branch = task["branch"]
    if git(repo, "branch", "--list", branch) == "":
        return False
    subjects = git(repo, "log", "--format=%s", f"main..{branch}").splitlines()
    assert "x" in subjects, subjects
    assert git(repo, "show", f"{branch}:f") == "hi"
    assert git(repo, "show", f"{branch}:g") == "more", "the uncommitted file is collected"
    return True


def assert_repo_whole(repo: Path, main: str, incoming_ok: bool) -> None:
    """The user's repository is as sound as before the run, only with a result branch."""
    fsck = subprocess.run(["git", "fsck", "--strict"], cwd=repo, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    locks = sorted(str(p) for p in (repo / ".git").rglob("*.lock"))
    assert locks == []
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(repo, "rev-parse", "main") == main
    assert git(repo, "status", "--porcelain") == ""
    if not incoming_ok:
        assert git(repo, "for-each-ref", "refs/hal-incoming/") == ""


def settle(hal: Hal, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """The task once it is neither in flight nor queued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [task] = [t for t in tasks_json(hal) if t["id"] == task_id]
        if task["status"] not in IN_FLIGHT:
            return task
        time.sleep(0.2)
    pytest.fail(f"task {task_id} never settled: {tasks_json(hal)}")


def killed_daemon(hal: Hal, hal_env: dict[str, str], repo: Path, point: str) -> str:
    """A task run through a ``hal serve`` that died at ``point``; its id."""
    home = Path(hal_env["HAL_HOME"])
    with (home.parent / "killed-serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(KILLER), point, "serve"],
            cwd=repo, env=hal_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    try:
        info = home / "run" / "serve.json"
        deadline = time.monotonic() + 30
        while not (info.exists() and json.loads(info.read_text())["pid"] == proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "hal serve never started"
            time.sleep(0.05)
        agent = AGENT.format(pause=PAUSES.get(point, ""))
        hal("run", "--detach", "--agent", agent, "do it")  # the daemon may die before it answers
        assert proc.wait(timeout=60) == -9, f"hal serve never reached {point}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [task] = tasks_json(hal)
    return str(task["id"])


def succeeds_after_a_restart(hal: Hal, repo: Path, task_id: str, main: str) -> dict[str, Any]:
    """The task once a next ``hal serve`` has carried it on: ``succeeded`` with its work,
    the repository whole, nothing of it running and every sandbox swept."""
    assert hal("serve", "--detach").returncode == 0
    try:
        task = settle(hal, task_id)
        assert task["status"] == "succeeded", task
        assert has_work(repo, task)
    finally:
        assert hal("serve", "--stop").returncode == 0
    assert_repo_whole(repo, main, incoming_ok=False)
    assert hal_processes_of(task) == []
    home = Path(str(task["session_dir"])).parents[1]
    assert list((home / "sandboxes").glob("*/*")) == [], "the restart swept every sandbox"
    return task
