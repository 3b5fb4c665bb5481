"""The approval flow through a real ``hal serve`` and a script agent: its branch reaches the
repository after a turn, a proposal denied from the CLI wakes it with the reason, a second
proposal approved from the CLI lands on ``main`` with the user's checkout untouched, and an
approved spawn request makes a new agent."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.hive.serve_helpers import as_json, commit_agent, poll, stop_daemon, turns_done
from tests.support.hal import Hal, git

from hal9999.hive import approvals, questions
from hal9999.store import Store

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(480)]

# The CLI tests' fixtures: a private HAL_HOME, a demo repository, `hal` as a subprocess.
demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal

AGENT = """#!/bin/sh
# A hive agent: keeps every prompt, and writes the feature it is asked for.
cat "$1" >> seen.txt
line=$(grep -o 'write: .*' "$1" | tail -1)
if [ -n "$line" ]; then echo "$line" > feature.txt; fi
"""
PRESET = "sh agent.sh {{prompt_file}}"


@pytest.fixture
def hive_repo(demo_repo: Path) -> Path:
    """The user's repository with the agent script; the user works on ``work``, not main."""
    commit_agent(demo_repo, AGENT)
    git(demo_repo, "checkout", "-q", "-b", "work")
    return demo_repo


@pytest.fixture
def serve(hal: Hal, hive_repo: Path) -> Iterator[Hal]:
    """A running ``hal serve``; its agents stopped and it stopped at the end."""
    assert hal("serve", "--detach").returncode == 0
    yield hal
    stop_daemon(hal)


def test_deny_then_approve_an_agents_branch_and_approve_a_spawn(
    serve: Hal, hal_env: dict[str, str], hive_repo: Path
) -> None:
    hal = serve
    spawned = hal("agent", "spawn", "alice", "--agent", PRESET, "--repo", str(hive_repo))
    assert spawned.returncode == 0, spawned.stderr
    assert hal("msg", "send", "alice", "write: version one").returncode == 0
    first = poll("alice's first turn", lambda: turns_done(hal, "alice", 1))
    workspace = Path(hal_env["HAL_HOME"]) / "sessions" / first["task_id"] / "workspace"
    assert git(hive_repo, "show", "hal/agent/alice:feature.txt") == "write: version one"
    main = git(hive_repo, "rev-parse", "main")
    (hive_repo / "calc.py").write_text("# the user's uncommitted edit\n")
    status = git(hive_repo, "status", "--porcelain")

    with Store.open(Path(hal_env["HAL_HOME"])) as store:
        proposal = asyncio.run(approvals.propose_apply(
            store, proposer="alice", repo=hive_repo, target="main", summary="v1"))  # fmt: skip
    shown = hal("approvals", "show", proposal.id)
    assert shown.returncode == 0 and "+write: version one" in shown.stdout, shown.stderr
    denied = hal("approvals", "deny", proposal.id, "--reason", "call it version two")
    assert denied.returncode == 0, denied.stderr
    # The denial wakes alice, and its turn's prompt carries the reason.
    poll("alice's turn for the denial", lambda: turns_done(hal, "alice", 2))
    assert "call it version two" in (workspace / "seen.txt").read_text()
    assert git(hive_repo, "rev-parse", "main") == main

    with Store.open(Path(hal_env["HAL_HOME"])) as store:
        questions.ask(store, asker="alice", question="Is version two the name?")
    assert hal("msg", "send", "alice", "write: version two").returncode == 0
    third = poll("alice's third turn", lambda: turns_done(hal, "alice", 3))
    # Turn statistics count the threads still open after the turn: the question.
    last = max(third["recent_turns"], key=lambda turn: turn["id"])
    assert last["open_threads"] == 1, third["recent_turns"]
    with Store.open(Path(hal_env["HAL_HOME"])) as store:
        second = asyncio.run(approvals.propose_apply(store, proposer="alice", repo=hive_repo,
                                                     target="main"))  # fmt: skip
    approved = hal("approvals", "approve", second.id, "--reason", "thanks")
    assert approved.returncode == 0, approved.stderr
    assert git(hive_repo, "show", "main:feature.txt") == "write: version two"
    assert git(hive_repo, "rev-parse", "main") == second.payload["head"]  # a fast-forward
    assert git(hive_repo, "rev-parse", "--abbrev-ref", "HEAD") == "work"
    assert git(hive_repo, "status", "--porcelain") == status
    poll("alice's turn for the approval", lambda: turns_done(hal, "alice", 4))
    assert "was approved by operator" in (workspace / "seen.txt").read_text()

    # A spawn request (as the manager's request_spawn makes it), approved from the CLI.
    with Store.open(Path(hal_env["HAL_HOME"])) as store:
        payload = {"name": "carol", "agent": PRESET, "role": None}
        spawn = approvals.propose(store, kind="spawn", proposer="alice", title="spawn carol",
                                  payload=payload)  # fmt: skip
    out = hal("approvals", "approve", spawn.id)
    assert out.returncode == 0, out.stderr
    assert "carol" in [agent["name"] for agent in as_json(hal, "agent", "list")]
    assert subprocess.run(["git", "-C", str(hive_repo), "fsck", "--no-progress"],
                          capture_output=True).returncode == 0  # fmt: skip
