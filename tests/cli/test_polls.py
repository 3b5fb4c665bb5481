"""The polls of the CLI and hive tests (``tasks_now``, ``daemon_tasks``, ``agent_now``) ask
a running daemon from the test process: the same document the CLI prints, and no ``hal``
started per poll (each ~0.3 s of CPU on a 2-core CI host); without a daemon, the CLI."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from tests.hive.serve_helpers import agent_now, agent_of
from tests.support.hal import Hal, daemon_tasks, tasks_json, tasks_now

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


def _starts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every process started from here on, by its argv."""
    started: list[Any] = []
    real = subprocess.Popen.__init__

    def counting(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        started.append(args)
        real(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", counting)
    return started


def test_a_poll_asks_the_daemon_and_starts_nothing(
    hal: Hal, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert daemon_tasks(hal) is None  # no daemon yet
    assert hal("serve", "--detach").returncode == 0
    try:
        out = hal("run", "--agent", "sh agent.sh {{prompt_file}}", "fix the bug")
        assert out.returncode == 0, out.stderr
        spawned = hal("agent", "spawn", "alice", "--agent", "sh agent.sh {{prompt_file}}")
        assert spawned.returncode == 0, spawned.stderr
        shown, listed = agent_of(hal, "alice"), tasks_json(hal)
        started = _starts(monkeypatch)
        polled, agent = tasks_now(hal), agent_now(hal, "alice")
        assert started == [], "a poll started a process"
        assert polled == daemon_tasks(hal) == listed and len(polled) == 1
        assert {k: v for k, v in agent.items() if k != "turn_running"} == shown
        assert agent["turn_running"] is False
        monkeypatch.undo()
    finally:
        assert hal("agent", "stop", "alice").returncode == 0
        assert hal("serve", "--stop").returncode == 0
    started = _starts(monkeypatch)
    assert tasks_now(hal) == listed and agent_now(hal, "alice")["name"] == "alice"
    assert len(started) == 2, "without a daemon, each is `hal`'s answer"
