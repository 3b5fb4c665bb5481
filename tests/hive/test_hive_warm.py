"""Warm agents through a real ``hal serve`` (bwrap): a ``--keep-warm`` agent's turns run in
one sandbox, created once; it is released when idle past its limit, on stop, when the daemon
stops, and a kill -9 of the daemon leaves no orphan behind (the next turn still works)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tests.cli.conftest as cli_fixtures
from tests.hive.serve_helpers import agent_of, as_json, poll, turns_done
from tests.support.hal import Hal, events_of
from tests.support.hive import PRESET

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal
reaped = cli_fixtures.reaped


@pytest.fixture
def serve(hal: Hal, hal_env: dict[str, str], hive_repo: Path) -> Iterator[Hal]:
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    # Returned sandboxes are destroyed, so only a held one can serve a second turn.
    config.write_text('[pool.bwrap]\npolicy = "destroy"\n')
    assert hal("serve", "--detach").returncode == 0
    yield hal
    hal("serve", "--stop")


def sandboxes(hal: Hal) -> list[dict[str, Any]]:
    """Every sandbox the provider has under this home (the provider's truth)."""
    return as_json(hal, "sandbox", "list")  # type: ignore[no-any-return]


def acquired(hal: Hal, task_id: str) -> list[dict[str, Any]]:
    return [e for e in events_of(hal, task_id) if e["type"] == "sandbox_acquired"]


def spawn(hal: Hal, repo: Path, name: str, *flags: str) -> None:
    out = hal("agent", "spawn", name, "--agent", PRESET, "--repo", str(repo), *flags)
    assert out.returncode == 0, out.stderr


def turn(hal: Hal, name: str, text: str, count: int) -> dict[str, Any]:
    assert hal("msg", "send", name, text).returncode == 0
    return poll(f"{name}'s turn {count}", lambda: turns_done(hal, name, count))  # type: ignore[no-any-return]


def test_a_warm_agent_keeps_one_sandbox_and_releases_it(serve: Hal, hive_repo: Path) -> None:
    hal = serve
    spawn(hal, hive_repo, "alice", "--keep-warm", "--warm-idle", "1h")
    assert agent_of(hal, "alice")["policy"]["warm"] is True
    task_id = turn(hal, "alice", "first", 1)["task_id"]
    # Between turns the sandbox is held for alice (leased to her task), not destroyed.
    [held] = sandboxes(hal)
    assert held["task_id"] == task_id and held["pool"] == "leased"
    turn(hal, "alice", "second", 2)
    first, second = acquired(hal, task_id)
    assert first["sandbox_id"] == second["sandbox_id"] == held["id"]
    assert (first["warm"], second["warm"]) == (False, True), "the second turn created none"
    assert [s["id"] for s in sandboxes(hal)] == [held["id"]]

    # A cold agent on the same daemon creates a sandbox per turn and holds none between.
    spawn(hal, hive_repo, "bob")
    bob_task = turn(hal, "bob", "first", 1)["task_id"]
    turn(hal, "bob", "second", 2)
    bob_first, bob_second = acquired(hal, bob_task)
    assert bob_first["sandbox_id"] != bob_second["sandbox_id"] and not bob_second["warm"]

    # Stopping alice releases her sandbox.
    assert hal("agent", "stop", "alice").returncode == 0
    assert sandboxes(hal) == []

    # Idle past its limit: released by the loop's sweep.
    spawn(hal, hive_repo, "carol", "--keep-warm", "--warm-idle", "3s")
    turn(hal, "carol", "first", 1)
    poll("carol's idle sandbox to be released", lambda: sandboxes(hal) == [], timeout=30)

    # Daemon stop releases a held sandbox too.
    spawn(hal, hive_repo, "dave", "--keep-warm")
    turn(hal, "dave", "first", 1)
    assert len(sandboxes(hal)) == 1
    assert hal("serve", "--stop").returncode == 0
    assert sandboxes(hal) == []


def test_kill_9_of_the_daemon_leaves_no_orphan_and_the_next_turn_works(
    serve: Hal, hal_env: dict[str, str], hive_repo: Path, reaped: None
) -> None:
    hal = serve
    spawn(hal, hive_repo, "erin", "--keep-warm", "--warm-idle", "1h")
    task_id = turn(hal, "erin", "before the crash", 1)["task_id"]
    [held] = sandboxes(hal)
    pid = json.loads((Path(hal_env["HAL_HOME"]) / "run" / "serve.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    poll("the daemon to die", lambda: not Path(f"/proc/{pid}").exists() or
         "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3])  # fmt: skip
    assert [s["id"] for s in sandboxes(hal)] == [held["id"]]  # held by no one now

    assert hal("serve", "--detach").returncode == 0
    # Recovery destroyed the sandbox no live task holds; the mail and workspace are intact.
    assert sandboxes(hal) == []
    after = turn(hal, "erin", "after the crash", 2)
    assert after["task_id"] == task_id
    seen = Path(hal_env["HAL_HOME"]) / "sessions" / task_id / "workspace" / "seen.txt"
    assert seen.read_text().count("before the crash") == 1
    assert seen.read_text().count("after the crash") == 1
    ids = [e["sandbox_id"] for e in acquired(hal, task_id)]
    assert len(ids) == 2 and ids[1] != held["id"]
    assert [s["id"] for s in sandboxes(hal)] == [ids[1]]  # warm again
