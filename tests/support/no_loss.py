"""The no-loss contract: work stopped mid-run is whole in its branch afterwards."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.contract.conftest import TaskPath
from tests.support.hal import git

from hal9999.store import TaskRecord

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
        return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(workspace), *args],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

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


def log_has(record: TaskRecord, text: str) -> bool:
    """Whether the task's log (every run's) holds ``text``."""
    try:
        return text in (Path(record.session_dir) / "agent.log").read_text(errors="replace")
    except OSError:
        return False


IN_FLIGHT = frozenset({"queued", "provisioning", "preparing", "running", "collecting"})


async def settled(path: TaskPath, task_id: str, timeout: float = WORK_TIMEOUT_S) -> TaskRecord:
    """The task once no run of it is in flight."""
    deadline = time.monotonic() + timeout
    while (task := await path.api.get(task_id)).status in IN_FLIGHT:
        assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
        await asyncio.sleep(0.3)
    return task


async def started(path: TaskPath, agent: str, provider: str, sign: Callable[[TaskRecord], bool],
                  what: str) -> TaskRecord:  # fmt: skip
    """A task of ``agent`` on ``provider`` started on the path, once ``sign`` holds for it."""
    # `hal run --detach`: its runner is a hal process (a detached one, or the daemon, which
    # the path's API starts first).
    assert path.api is not None
    out = path.hal("run", "--detach", "--json", "--provider", provider, "--agent", agent, "work")
    assert out.returncode == 0, out.stderr[-2000:]
    task = await path.api.get(json.loads(out.stdout)["id"])
    deadline = time.monotonic() + WORK_TIMEOUT_S
    while not sign(task):
        task = await path.api.get(task.id)
        assert task.status in IN_FLIGHT, (task.status, task.error_message)
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return task


async def stop_mid_run(path: TaskPath, provider: str) -> TaskRecord:
    """Run the working agent on ``provider``, stop it once its work is done; the record."""
    plant_agent(path.repo)
    task = await started(path, AGENT, provider, lambda t: log_has(t, "WORK-DONE"),
                         "the agent's work")  # fmt: skip
    stopped = await path.api.stop(task.id)
    assert stopped.status == "stopped", (stopped.status, stopped.error_message)
    ended = await settled(path, task.id)
    assert ended.status == "stopped", (ended.status, ended.error_message)
    return stopped


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
