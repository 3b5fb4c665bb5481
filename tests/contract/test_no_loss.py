"""No work is lost by a stop, on every path and every provider that runs here: an agent
commits, leaves a file uncommitted and works on; the task is stopped through the task API
mid-run; the session's checkout then holds both, its ``HEAD`` and objects whole, and a
resume carries the same work on to the task's branch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.cli.conftest import git
from tests.contract.conftest import TaskPath

from hal9999.store import TaskRecord

pytestmark = [pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(420)]

WORK_AGENT = """#!/bin/sh
# A resumed run finds the work of the stopped one, says so and ends.
if [ -f uncommitted.txt ] && git log --format=%s | grep -qx "agent commit"; then
    echo "RESUMED-WITH-THE-WORK"
    exit 0
fi
i=0
while [ $i -lt 300 ]; do echo "line $i" > "made-$i.txt"; i=$((i + 1)); done
git add -A
git -c user.name=agent -c user.email=agent@example.invalid commit -qm "agent commit"
echo "left for the collection" > uncommitted.txt
echo "WORK-""DONE"
exec sleep 600
"""
"""Commits many files (objects a cut pull would lose), leaves one uncommitted, then works
on until it is stopped; run again, it ends at once when the work is there."""
AGENT = "sh work_agent.sh"
WORK_TIMEOUT_S = 240.0


def plant_agent(repo: Path) -> None:
    """The working agent, committed to the task's repo."""
    (repo / "work_agent.sh").write_text(WORK_AGENT)
    git(repo, "add", "work_agent.sh")
    git(repo, "commit", "-qm", "working agent")


def checkout_problems(workspace: Path) -> list[str]:
    """What is wrong with the session's checkout: a ``HEAD`` that is not a commit, objects
    missing, the agent's commit or its uncommitted file absent (empty when all is there)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(workspace), *args], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip

    problems = []
    head = run("rev-parse", "--verify", "HEAD^{commit}")
    if head.returncode != 0:
        return [f"HEAD: {head.stderr.strip()}"]
    fsck = run("fsck", "--connectivity-only", "--no-dangling")
    if fsck.returncode != 0:
        problems.append(f"fsck: {fsck.stderr.strip()[-500:]}")
    subjects = run("log", "--format=%s").stdout.splitlines()
    if "agent commit" not in subjects:
        problems.append(f"the agent's commit is not in HEAD's history: {subjects}")
    if not (workspace / "uncommitted.txt").is_file():
        problems.append("the uncommitted file is gone")
    return problems


async def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``check`` until it holds (or fail naming ``what``)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def log_has(record: TaskRecord, text: str) -> bool:
    """Whether the task's log (every run's) holds ``text``."""
    try:
        return text in (Path(record.session_dir) / "agent.log").read_text(errors="replace")
    except OSError:
        return False


async def stop_mid_run(path: TaskPath, provider: str) -> TaskRecord:
    """Run the working agent on ``provider``, stop it once its work is done; the record."""
    plant_agent(path.repo)
    started: list[TaskRecord] = []
    request = path.request("work, then wait", agent=AGENT, provider=provider)
    run = asyncio.create_task(path.api.run(request, on_start=started.append))
    await wait_for(lambda: bool(started) or run.done(), "the task to start", 60)
    if run.done():
        return run.result()
    task = started[0]
    await wait_for(lambda: log_has(task, "WORK-DONE") or run.done(), "the agent's work",
                   WORK_TIMEOUT_S)  # fmt: skip
    assert not run.done(), (run.result().status, run.result().error_message)
    stopped = await path.api.stop(task.id)
    assert stopped.status == "stopped", (stopped.status, stopped.error_message)
    ended = await asyncio.wait_for(run, WORK_TIMEOUT_S)
    assert ended.status == "stopped", (ended.status, ended.error_message)
    return stopped


def ssh_config(server: Any) -> str:
    """The test sshd as the ssh provider's one host, checkpoints off (the stop's own pull
    is what brings the work back)."""
    entry = server.host_entry()
    lines = [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    return ("[providers.ssh]\ncheckpoint_s = 3600\n\n[[providers.ssh.hosts]]\n"
            + "\n".join(lines) + "\n")  # fmt: skip


@pytest.mark.ssh
async def test_a_stop_keeps_the_work_on_ssh(task_path: TaskPath, sshd_server: Any) -> None:
    task_path.config_file.write_text(ssh_config(sshd_server))
    await stopped_work_is_whole(task_path, "ssh")


async def stopped_work_is_whole(path: TaskPath, provider: str) -> None:
    """The body: stop mid-run, the checkout whole, a resume finds the work."""
    stopped = await stop_mid_run(path, provider)
    workspace = Path(stopped.session_dir) / "workspace"
    assert checkout_problems(workspace) == [], f"{path.name}/{provider}: the stop lost work"
    resumed = await path.api.resume(stopped.id)
    assert resumed.status == "succeeded", (resumed.status, resumed.error_message)
    assert log_has(resumed, "RESUMED-WITH-THE-WORK")
    branch = resumed.branch
    assert git(path.repo, "show", f"{branch}:uncommitted.txt") == "left for the collection"
    assert git(path.repo, "show", f"{branch}:made-299.txt") == "line 299"
