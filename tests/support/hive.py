"""A hive with fake tasks, its MCP hub, and the hive daemon tests' scripted agent."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from hal9999.hive.mcp.server import McpHub
from hal9999.store import Store, TaskRecord
from hal9999.tasks.request import RunRequest

# The agent's long sleep has a duration of this run's own, so the tests kill exactly their
# sleepers (never another test's or a user's `sleep 300`).
SLEEP = f"300.{secrets.randbelow(10**6):06d}"


AGENT = f"""#!/bin/sh
# A hive agent: records every prompt it gets, and misbehaves when told to.
cat "$1" >> seen.txt
if grep -q "please crash" "$1" && [ ! -e crashed-once ]; then
  touch crashed-once
  exec sleep {SLEEP}
fi
if grep -q "always crash" "$1"; then exec sleep {SLEEP}; fi
if grep -q "take your time" "$1"; then sleep 4; fi
echo "done: $(grep -c . "$1") lines"
"""


PRESET = "sh agent.sh {{prompt_file}}"


@dataclass
class FakeTasks:
    """Records sub-task requests; tasks stay as the test sets them."""

    created: list[RunRequest] = field(default_factory=list)
    records: dict[str, TaskRecord] = field(default_factory=dict)

    async def create(self, request: RunRequest) -> TaskRecord:
        task_id = f"t{len(self.created):07d}"
        self.created.append(request)
        record = TaskRecord(
            id=task_id, prompt=request.prompt, agent=request.agent, provider=request.provider,
            process_manager="tmux", repo=str(request.repo), repo_kind="local",
            branch=f"hal/{task_id}", status="queued", created_at=time.time(),
            session_dir=f"/nonexistent/{task_id}",
        )  # fmt: skip
        self.records[task_id] = record
        return record

    async def get(self, task_id: str) -> TaskRecord:
        return self.records[task_id]

    async def shown_patch(self, task: TaskRecord, text: str) -> str:
        return text


@dataclass
class World:
    """A hive store, its MCP hub over fake tasks, and each agent's socket."""

    store: Store
    hub: McpHub
    tasks: FakeTasks
    socks: dict[str, Path]


def _git_repo(path: Path, *branches: str) -> dict[str, str]:
    """``path`` made a repository: a commit on main, then one more on each of ``branches``
    (each from main); the commit of each branch, by name."""
    import subprocess

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return run.stdout.strip()

    git("init", "-q", "-b", "main")
    git("commit", "-q", "--allow-empty", "-m", "base")
    heads = {"main": git("rev-parse", "HEAD")}
    for branch in branches:
        git("checkout", "-q", "-b", branch, "main")
        git("commit", "-q", "--allow-empty", "-m", f"work of {branch}")
        heads[branch] = git("rev-parse", "HEAD")
    git("checkout", "-q", "main")
    return heads
