"""``hal serve`` killed (SIGKILL) at chosen moments of an agent's turn, then started again:
the message that woke the turn reaches the agent exactly once (never dropped as if the turn
had run, never run twice), the agent sleeps again with its mail read, and no turn is left
open for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.hive import serve_helpers
from tests.hive.serve_helpers import agent_of, as_json, commit_agent
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(240)]

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal
reaped = cli_fixtures.reaped

AGENT = '#!/bin/sh\ncat "$1" >> seen.txt\necho done\n'
PRESET = "sh agent.sh {{prompt_file}}"
poll = partial(serve_helpers.poll, timeout=90)

# `hal serve` in the foreground, killed -9 at the moment argv[1] names.
KILLED_SERVE = textwrap.dedent(
    """
    import os, runpy, signal, sys, time
    from hal9999.hive import agents, stats, turns

    def die():
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)

    def after(real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            die()
            return result
        return call

    point = sys.argv[1]
    if point == "before-the-run-is-queued":  # the turn's row is open, its run not queued
        from hal9999.tasks.served import ServedTaskAPI
        async def resume(*args, **kwargs):
            die()
        ServedTaskAPI.resume = resume
    elif point == "before-the-agent-names-its-task":  # the first turn's task was made
        real_update = turns.update_agent
        def update(store, name, **fields):
            if "task_id" in fields:
                die()
            return real_update(store, name, **fields)
        turns.update_agent = update
    elif point == "before-the-agent-starts":  # `running`, its supervisor waiting for a `g`
        from pathlib import Path
        from hal9999.process import tmux
        from hal9999.store import Store
        def start(manager, sandbox, spec, **kwargs):
            home = Path(os.environ["HAL_HOME"])
            with Store.open(home) as store:  # the status the kill meets, for the test
                task = store.get_task(spec.name.removeprefix("hal-"))
            (home / "killed-at").write_text(task.status)
            die()
        tmux.TmuxProcessManager.start = start
    elif point == "at-running-its-pane-slow":  # killed as `running` is written
        import asyncio
        from hal9999.process import tmux
        from hal9999.store import Store
        real_prestart, real_set = tmux.TmuxProcessManager.prestart, Store.set_status
        async def prestart(*args, **kwargs):
            await asyncio.sleep(1.5)  # the pane opens after the run's checkout
            return await real_prestart(*args, **kwargs)
        def set_status(self, task_id, target, **kwargs):
            written = real_set(self, task_id, target, **kwargs)
            if target == "running":
                die()
            return written
        tmux.TmuxProcessManager.prestart, Store.set_status = prestart, set_status
    elif point == "stopped-in-the-agents-start":  # SIGTERM (`hal serve --stop`) meets it
        import asyncio
        from hal9999.process import tmux
        def start(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return asyncio.sleep(60)  # where the stop's cancel reaches the run
        tmux.TmuxProcessManager.start = start
    elif point == "after-the-cursor":  # the turn's mail is taken in the ledger
        agents.AgentDir.set_cursor = after(agents.AgentDir.set_cursor)
    elif point == "after-the-turn-row":  # the turn's row is closed
        stats.finish_turn = after(stats.finish_turn)
    sys.argv = ["hal", "serve"]
    runpy.run_module("hal9999", run_name="__main__")
    """
)


@pytest.fixture
def hive_repo(demo_repo: Path) -> Path:
    commit_agent(demo_repo, AGENT)
    return demo_repo


@pytest.fixture
def daemon(hal: Hal, hal_env: dict[str, str]) -> Iterator[Hal]:
    yield hal
    hal("serve", "--stop")


def seen_in_all_sessions(hal_env: dict[str, str], text: str) -> int:
    sessions = Path(hal_env["HAL_HOME"]) / "sessions"
    return sum(p.read_text().count(text) for p in sessions.glob("*/workspace/seen.txt"))


def settled(hal: Hal, name: str) -> dict[str, object] | None:
    """The agent once it sleeps with every message read and every turn closed."""
    agent = agent_of(hal, name)
    mail = as_json(hal, "msg", "inbox", name, "--all")
    if agent["state"] != "sleeping" or any(m["state"] != "read" for m in mail):
        return None
    if any(t["result"] is None for t in agent["recent_turns"]):
        return None
    return agent


@pytest.mark.parametrize(
    "point",
    ["before-the-run-is-queued", "before-the-agent-names-its-task", "before-the-agent-starts",
     "at-running-its-pane-slow", "stopped-in-the-agents-start", "after-the-cursor",
     "after-the-turn-row"],
)  # fmt: skip
def test_a_message_reaches_the_agent_once_whatever_moment_the_daemon_is_killed(
    daemon: Hal, hal_env: dict[str, str], hive_repo: Path, point: str, reaped: None
) -> None:
    hal = daemon
    assert hal("serve", "--detach").returncode == 0
    spawned = hal("agent", "spawn", "bob", "--agent", PRESET, "--repo", str(hive_repo))
    assert spawned.returncode == 0, spawned.stderr
    if point != "before-the-agent-names-its-task":  # a turn before: the next one resumes
        assert hal("msg", "send", "bob", "the first message").returncode == 0
        poll("bob's first turn", lambda: settled(hal, "bob"))
    assert hal("serve", "--stop").returncode == 0

    # Committed while no daemon runs; the next one takes it into a turn and is killed.
    assert hal("msg", "send", "bob", "the message that must arrive once").returncode == 0
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SERVE, point], capture_output=True, text=True,
        env={**hal_env, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120,
    )  # fmt: skip
    if point == "before-the-agent-starts":
        assert (Path(hal_env["HAL_HOME"]) / "killed-at").read_text() == "running"
    stopped = point.startswith("stopped-")
    assert killed.returncode == (0 if stopped else -signal.SIGKILL), killed.stderr[-2000:]

    assert hal("serve", "--detach").returncode == 0
    agent = poll("bob to finish the turn and sleep", lambda: settled(hal, "bob"))
    assert seen_in_all_sessions(hal_env, "the message that must arrive once") == 1
    tasks = as_json(hal, "task", "list")
    assert [t["id"] for t in tasks] == [agent["task_id"]], "one long-lived task"
    if point in ("before-the-agent-starts", "at-running-its-pane-slow",
                 "stopped-in-the-agents-start"):  # fmt: skip
        # No agent ran: its supervisor said so, and the next daemon ran the turn's task
        # again (the same turn), not a crash of the agent's (backoff, the manager told).
        assert [t["result"] for t in agent["recent_turns"]] == ["ok", "ok"]
