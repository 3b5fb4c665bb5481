"""The hive through a real ``hal serve``: an operator message wakes a custom (shell script)
agent whose turns resume one long-lived workspace; mail is delivered once across a kill -9
of the daemon; crash watch restarts a killed agent and gives up on a crash loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tests.cli.conftest as cli_fixtures
from tests.hive import serve_helpers
from tests.hive.serve_helpers import (
    agent_now,
    agent_of,
    as_json,
    stop_daemon,
    turns_done,
    write_config,
)
from tests.support.hal import Hal, git
from tests.support.hive import PRESET, SLEEP

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

# The CLI tests' fixtures: a private HAL_HOME, a demo repository, `hal` as a subprocess.
demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal
reaped = cli_fixtures.reaped


poll = partial(serve_helpers.poll, timeout=45)


@pytest.fixture
def serve(hal: Hal, hal_env: dict[str, str], hive_repo: Path) -> Iterator[Hal]:
    """A running ``hal serve`` that restarts a crashed agent after 0.5 s and gives up on the
    third crash; at the end its agents and it are stopped and this run's sleepers killed."""
    write_config(hal_env, "[hive]\ncrash_backoff_s = 0.5\ncrash_loop = 3\n")
    assert hal("serve", "--detach").returncode == 0
    yield hal
    stop_daemon(hal)
    kill_sleeper()


def hive_events(hal_env: dict[str, str]) -> list[dict[str, Any]]:
    from hal9999.hive.store import hive_events_after
    from hal9999.store import Store

    with Store.open(Path(hal_env["HAL_HOME"])) as store:
        return [e.model_dump() for e in hive_events_after(store, 0)]


def seen(hal_env: dict[str, str], task_id: str) -> str:
    path = Path(hal_env["HAL_HOME"]) / "sessions" / task_id / "workspace" / "seen.txt"
    return path.read_text() if path.exists() else ""


def test_an_operator_message_wakes_the_agent_and_turns_resume_its_workspace(
    serve: Hal, hal_env: dict[str, str], hive_repo: Path
) -> None:
    hal = serve
    out = hal("agent", "spawn", "alice", "--agent", PRESET, "--repo", str(hive_repo))
    assert out.returncode == 0, out.stderr
    spawned = agent_of(hal, "alice")
    assert spawned["state"] == "sleeping" and spawned["task_id"] is None

    assert hal("msg", "send", "alice", "first: fix the bug").returncode == 0
    first = poll("the first turn", lambda: turns_done(hal, "alice", 1))
    task_id = first["task_id"]
    assert first["recent_turns"][0]["result"] == "ok"
    assert first["recent_turns"][0]["wake_reason"] == "message from operator"

    assert hal("msg", "send", "alice", "second: and now the docs").returncode == 0
    second = poll("the second turn", lambda: turns_done(hal, "alice", 2))
    assert second["task_id"] == task_id, "every turn resumes the one long-lived task"
    # The task holds the turn's prompt (a run started without the daemon's submission, after
    # a restart, gets the same prompt).
    shown = json.loads(hal("task", "show", task_id, "--json").stdout)
    assert "second: and now the docs" in shown["prompt"] and "first:" not in shown["prompt"]
    text = seen(hal_env, task_id)
    # One workspace across turns: the file the first turn wrote is there in the second.
    assert text.count("first: fix the bug") == 1 and text.count("second: and now the docs") == 1
    assert "You are alice" in text
    # The work is on the agent's branch in the source repository.
    assert "seen.txt" in git(hive_repo, "show", "--stat", "hal/agent/alice")

    inbox = as_json(hal, "msg", "inbox", "alice", "--all")
    assert [m["state"] for m in inbox] == ["read", "read"]
    stats = as_json(hal, "agent", "stats", "alice")
    assert stats["turns"] == 2 and stats["results"] == {"ok": 2}
    assert stats["p50_ms"] > 0 and stats["p95_ms"] >= stats["p50_ms"]

    types = [e["type"] for e in hive_events(hal_env)]
    for wanted in ("message_sent", "message_delivered", "message_read", "agent_state",
                   "turn_finished"):  # fmt: skip
        assert wanted in types
    gseqs = [e["gseq"] for e in hive_events(hal_env)]
    assert gseqs == sorted(gseqs) and len(set(gseqs)) == len(gseqs)

    # A stopped agent wakes for nothing; started, the mail waiting wakes it.
    assert hal("agent", "stop", "alice").returncode == 0
    assert hal("msg", "send", "alice", "third: while stopped").returncode == 0
    time.sleep(3)
    assert agent_of(hal, "alice")["state"] == "stopped"
    assert "third" not in seen(hal_env, task_id)
    assert hal("agent", "start", "alice").returncode == 0
    poll("the third turn", lambda: turns_done(hal, "alice", 3))
    assert seen(hal_env, task_id).count("third: while stopped") == 1

    assert (Path(hal_env["HAL_HOME"]) / "hive" / "mcp" / "alice").is_dir()
    removed = hal("agent", "rm", "alice")
    assert removed.returncode == 0, removed.stderr
    assert not (Path(hal_env["HAL_HOME"]) / "agents" / "alice").exists()
    # Its MCP socket is gone with the removal (its sessions ended), not at the hub's next sync.
    assert not (Path(hal_env["HAL_HOME"]) / "hive" / "mcp" / "alice").exists()
    assert hal("agent", "show", "alice").returncode == 3


KILL_DURING_DELIVERY = """
import os, signal, sys
from pathlib import Path
from hal9999.errors import HalError
from hal9999.config import load_config
from hal9999.hive import turns
from hal9999.hivesettings import HiveSettings
from hal9999.store import Store
from hal9999.tasks.served import ServedTaskAPI
from hal9999.tasks.service import TaskService

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # after the ledger append, before the mark

config = load_config()
store = Store.open(config.home)
tasks = ServedTaskAPI(TaskService(config, store, os.environ), None, None)
loop = turns.HiveLoop(tasks, HiveSettings())
turns.mark = die
loop.deliver(sys.argv[1])
"""


def test_a_message_is_delivered_once_across_kill_9_during_delivery(
    hal: Hal, hal_env: dict[str, str], hive_repo: Path, reaped: None
) -> None:
    assert hal("serve", "--detach").returncode == 0
    try:
        spawned = hal("agent", "spawn", "bob", "--agent", PRESET, "--repo", str(hive_repo))
        assert spawned.returncode == 0, spawned.stderr
        assert hal("serve", "--stop").returncode == 0
        # No daemon: the message is committed, not delivered.
        sent = as_json(hal, "msg", "send", "bob", "deliver me exactly once")
        # A process delivering it is killed -9 between the ledger and the broker's mark.
        died = subprocess.run(
            [sys.executable, "-c", KILL_DURING_DELIVERY, "bob"],
            env={**hal_env, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert died.returncode == -signal.SIGKILL, died.stderr
        ledger = Path(hal_env["HAL_HOME"]) / "agents" / "bob" / "mailbox.jsonl"
        assert sent["id"] in ledger.read_text()
        assert as_json(hal, "msg", "inbox", "bob")[0]["state"] == "sent"  # not marked

        # The daemon delivers it again (at least once), the agent sees it once.
        assert hal("serve", "--detach").returncode == 0
        agent = poll("bob's turn", lambda: turns_done(hal, "bob", 1))
        assert ledger.read_text().count(sent["id"]) == 1
        assert seen(hal_env, agent["task_id"]).count("deliver me exactly once") == 1
        assert [m["state"] for m in as_json(hal, "msg", "inbox", "bob", "--all")] == ["read"]

        # kill -9 of the daemon in the middle of a turn: the next one finishes that turn.
        assert hal("msg", "send", "bob", "take your time").returncode == 0
        poll("bob's second turn", lambda: agent_now(hal, "bob")["state"] == "running")
        # ... its agent running: the message seen, so never delivered again. (A kill between
        # the task's `running` and its agent's start: test_hive_crash.py, whose point
        # before-the-agent-starts kills the daemon in exactly that window.)
        poll("bob's agent", lambda: "take your time" in seen(hal_env, agent["task_id"]))
        pid = json.loads((Path(hal_env["HAL_HOME"]) / "run" / "serve.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        poll("the daemon to die", lambda: not Path(f"/proc/{pid}").exists() or
             "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3])  # fmt: skip
        assert hal("serve", "--detach").returncode == 0
        agent = poll("bob's second turn to end", lambda: turns_done(hal, "bob", 2), timeout=60)
        assert seen(hal_env, agent["task_id"]).count("take your time") == 1
        assert [m["state"] for m in as_json(hal, "msg", "inbox", "bob", "--all")] == ["read"] * 2
    finally:
        hal("serve", "--stop")


def kill_sleeper() -> bool:
    found = subprocess.run(["pgrep", "-x", "-f", f"sleep {SLEEP}"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return bool(pids)


def test_crash_watch_restarts_a_killed_agent_and_stops_a_crash_loop(
    serve: Hal, hal_env: dict[str, str], hive_repo: Path
) -> None:
    hal = serve
    assert hal("hive", "init", "--agent", PRESET, "--repo", str(hive_repo)).returncode == 0
    spawned = hal("agent", "spawn", "carol", "--agent", PRESET, "--repo", str(hive_repo))
    assert spawned.returncode == 0, spawned.stderr
    assert hal("msg", "send", "carol", "please crash").returncode == 0
    poll("carol's agent to run", kill_sleeper)
    # Restarted after the backoff over the same mail; this time it finishes.
    agent = poll("carol's restarted turn", lambda: turns_done(hal, "carol", 2))
    assert [t["result"] for t in agent["recent_turns"]] == ["crashed", "ok"]
    assert seen(hal_env, agent["task_id"]).count("please crash") == 2
    crashed = [e for e in hive_events(hal_env) if e["type"] == "agent_crashed"]
    assert crashed[0]["agent"] == "carol" and crashed[0]["restart_in_s"] == 0.5
    assert "killed by signal 9" in crashed[0]["detail"]
    # The manager was told (and woke for it).
    manager_mail = as_json(hal, "msg", "inbox", "manager", "--all")
    assert any("carol crashed" in m["body"] and m["sender"] == "hal" for m in manager_mail)

    assert hal("msg", "send", "carol", "always crash").returncode == 0
    for n in range(3):
        poll(f"carol's agent to run ({n})", kill_sleeper)
        time.sleep(0.5)
    final = poll("carol to be given up on", lambda: agent_now(hal, "carol")["state"] == "crashed")
    assert final
    carol = agent_of(hal, "carol")
    assert "crash loop: 3 crashes" in carol["detail"]
    notices = as_json(hal, "msg", "inbox")
    assert any("carol crashed" in m["body"] and "NOT restarted" in m["body"] for m in notices)
    time.sleep(2)
    assert not kill_sleeper(), "a crash loop is not restarted"


def test_hive_events_long_poll_wakes_on_a_new_event(
    serve: Hal, hal_env: dict[str, str], hive_repo: Path
) -> None:
    import asyncio
    import threading

    from hal9999.errors import HalError
    from hal9999.server.client import DaemonClient

    hal = serve
    spawned = hal("agent", "spawn", "dave", "--agent", PRESET, "--repo", str(hive_repo))
    assert spawned.returncode == 0, spawned.stderr
    assert hal("agent", "stop", "dave").returncode == 0  # no turn: only the events asked for
    client = DaemonClient.find(Path(hal_env["HAL_HOME"]))
    assert client is not None
    first = asyncio.run(client.call("GET", "/v1/hive/events", query={"after": 0}))
    assert [e["type"] for e in first["events"]] == ["agent_state", "agent_state"]
    after = first["last_gseq"]

    threading.Timer(1.0, lambda: hal("msg", "send", "dave", "wake the poll")).start()
    started = time.monotonic()
    page = asyncio.run(client.call("GET", "/v1/hive/events", query={"after": after, "wait": 20}))
    waited = time.monotonic() - started
    assert 0.5 < waited < 15, waited
    [sent] = page["events"]
    assert sent["type"] == "message_sent" and sent["recipient"] == "dave"
    assert sent["gseq"] > after == first["events"][-1]["gseq"]
    assert "wake the poll" not in json.dumps(page)  # bodies stay in the broker

    # Whoever holds the daemon's token is the operator: a body naming another sender is
    # refused (a route refuses a name it does not read), never a way to speak
    # as an agent (or as hal); without it the message is the operator's.
    for forged in ("dave", "hal", "manager"):
        with pytest.raises(HalError, match="unknown field 'sender' in the request body"):
            asyncio.run(client.call("POST", "/v1/hive/messages",
                                    {"to": "dave", "body": "hi", "sender": forged}))  # fmt: skip
    made = asyncio.run(client.call("POST", "/v1/hive/messages", {"to": "dave", "body": "hi"}))
    assert made["sender"] == "operator"
