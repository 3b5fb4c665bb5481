"""A hive agent's log and event files stay bounded over many turns: rotated between turns
at ``[hive] agent_files_mb`` (through a real ``hal serve`` and a script agent that prints a
lot every turn), with the events' ``seq`` going on unbroken for every reader and a follower
that lives through a rotation; and the agent's own reminders cannot wake it back to back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.hive.conftest import make_agent
from tests.hive.serve_helpers import (
    agent_now,
    as_json,
    commit_agent,
    poll,
    stop_daemon,
    write_config,
)
from tests.support.hal import Hal

from hal9999.config import HalConfig
from hal9999.events.log import EventLog
from hal9999.events.models import Message
from hal9999.events.reader import events_after_seq, follow_events, follow_text, read_events
from hal9999.events.rotation import rotate_events, rotate_log, with_rotated
from hal9999.hive import broker, reminders
from hal9999.hive.agents import AgentDir
from hal9999.hive.selfwake import self_wake_ready
from hal9999.hive.store import get_agent
from hal9999.hive.turns import HiveLoop
from hal9999.hivesettings import HiveSettings
from hal9999.store import Store
from hal9999.tasks.served import ServedTaskAPI
from hal9999.tasks.service import TaskService

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal

CAP_MB = 4
LOG_CAP_MB = 1
TURNS = 12
# Every turn prints 3 MB (the log keeps 1 MB of it a run, the output events some more).
AGENT = """#!/bin/sh
yes 'all work and no play makes the agent a dull agent' | head -c 3000000
echo "turn done: $(grep -c . "$1") lines"
"""


def on_disk(session: Path) -> int:
    """Bytes of the task's log and event files, rotated ones and run records included."""
    files = with_rotated(session / "agent.log", session / "events.jsonl")
    files += [*(session / "run").glob("parsed-*.jsonl"), *session.glob(".agent.log.tail-*")]
    return sum(path.stat().st_size for path in files if path.exists())


@pytest.fixture
def serve(hal: Hal, hal_env: dict[str, str], demo_repo: Path) -> Iterator[Hal]:
    commit_agent(demo_repo, AGENT)
    hal_env["HAL_LOG_CAP_MB"] = str(LOG_CAP_MB)
    write_config(hal_env, f"[hive]\nagent_files_mb = {CAP_MB}\n")
    assert hal("serve", "--detach").returncode == 0
    yield hal
    stop_daemon(hal)


@pytest.mark.bwrap
@pytest.mark.tmux
def test_an_agents_files_stay_under_the_cap_over_many_turns(
    serve: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    hal = serve
    made = hal("agent", "spawn", "alice", "--agent", "sh agent.sh {{prompt_file}}",
               "--repo", str(demo_repo))  # fmt: skip
    assert made.returncode == 0, made.stderr
    most = 0
    for turn in range(TURNS):
        assert hal("msg", "send", "alice", f"turn {turn}").returncode == 0
        poll(f"turn {turn}", lambda: all(m["state"] == "read" for m in
             as_json(hal, "msg", "inbox", "alice", "--all"))
             and agent_now(hal, "alice")["state"] == "sleeping", timeout=120)  # fmt: skip
        task_id = agent_now(hal, "alice")["task_id"]
        session = Path(hal_env["HAL_HOME"]) / "sessions" / task_id
        most = max(most, on_disk(session))
    # At a turn's start the files hold at most the cap; a turn adds one run's worth (1 MiB
    # of log and its output events) to each of the two generations.
    assert most <= (CAP_MB + 4 * LOG_CAP_MB) << 20, most
    assert (session / "agent.log.1").exists() and (session / "events.jsonl.1").exists()
    events = read_events(session / "events.jsonl")
    seqs = [event.seq for event in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # unbroken, none twice
    shown = hal("task", "events", task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["seq"] for line in shown.stdout.splitlines()] == seqs
    logs = hal("task", "logs", task_id)
    assert logs.returncode == 0 and "turn done:" in logs.stdout


def test_readers_and_followers_go_on_across_a_rotation(tmp_path: Path) -> None:
    path, log_path = tmp_path / "events.jsonl", tmp_path / "agent.log"

    def emit(texts: range) -> None:
        with EventLog(path, "t1") as log:
            for n in texts:
                log.emit(Message(text=f"event {n}"))

    async def main() -> tuple[list[int], str]:
        done = False
        events = asyncio.create_task(_collect(follow_events(path, stop=lambda: done)))
        text = asyncio.create_task(_text(follow_text(log_path, stop=lambda: done)))
        emit(range(1, 51))
        log_path.write_text("before\n")
        await asyncio.sleep(0.5)
        rotate_events(path)
        rotate_log(log_path)
        emit(range(51, 101))
        log_path.write_text("after\n")
        await asyncio.sleep(0.5)
        done = True
        return await events, await text

    seen, text = asyncio.run(main())
    assert seen == list(range(1, 101))
    assert text == "before\nafter\n"
    assert [e.seq for e in read_events(path)] == list(range(1, 101))
    assert [e.seq for e in events_after_seq(path, 40)] == list(range(41, 101))
    assert [e.seq for e in read_events(path, after_seq=70)] == list(range(71, 101))
    with EventLog(path, "t1") as log:  # a writer that opens it later goes on from 100
        assert log.emit(Message(text="next")).seq == 101


async def _collect(events: object) -> list[int]:
    return [event.seq async for event in events]  # type: ignore[attr-defined]


async def _text(chunks: object) -> str:
    return "".join([chunk async for chunk in chunks])  # type: ignore[attr-defined]


def test_the_agents_own_reminders_wake_it_no_sooner_than_the_minimum(tmp_path: Path) -> None:
    # Bob has a mailbox but no role: a turn that starts fails in hal at once (a crash), so
    # a crash says a turn started.
    home = tmp_path / "home"
    with Store.open(home) as store:
        make_agent(store, "bob")
        AgentDir.of(home, "bob").root.mkdir(parents=True)
        config = HalConfig(home=home, process_manager="direct", default_provider="local")
        settings = HiveSettings(self_wake_min_s=30.0, crash_backoff_s=60.0)
        hive = HiveLoop(ServedTaskAPI(TaskService(config, store, {}), None, None), settings)  # type: ignore[arg-type]
        reminders.remind(store, agent="bob", text="again", in_s=0.01)
        time.sleep(0.05)
        assert reminders.fire_due(store)

        async def main() -> None:
            hive._loop = asyncio.get_running_loop()
            hive.self_wakes.turn_ended("bob")  # as a turn of this loop just did
            hive.wake("bob")
            await until(lambda: hive.self_wakes.holds("bob") and "bob" not in hive.turns)
            await asyncio.sleep(0.5)
            assert get_agent(store, "bob").crashes == 0  # its reminder alone: no turn yet
            broker.send(store, sender="operator", recipient="bob", body="look at this")
            hive.wake("bob")  # other mail: the turn starts at once
            await until(lambda: get_agent(store, "bob").crashes == 1)

        asyncio.run(main())
        assert [m.kind for m in broker.inbox(store, "bob")] == ["reminder", "message"]
        ended = time.monotonic()
        ready = self_wake_ready(ended, [{"kind": "reminder"}], 30.0)
        assert ready is not None and ready >= ended + 30.0
        assert self_wake_ready(ended - 31.0, [{"kind": "reminder"}], 30.0) is None


async def until(check: object, timeout: float = 20.0) -> None:
    """Poll ``check()`` until it is true."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
