"""Watching a live task: logs -f, events -f, attach; and hal doctor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.cli.quick_agents import quick_agents_path
from tests.support.hal import Hal, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

SLOW_AGENT = "sh -c 'for i in 1 2 3 4 5; do echo line-$i; sleep 0.4; done'"


def start_detached(hal: Hal, agent: str = SLOW_AGENT) -> str:
    out = hal("run", "--detach", "--agent", agent, "count")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_logs_follow_streams_until_the_task_ends(hal: Hal) -> None:
    task_id = start_detached(hal)
    follow = hal("task", "logs", "-f", task_id, timeout=60)
    assert follow.returncode == 0, follow.stderr
    lines = [line for line in follow.stdout.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 6)]
    assert tasks_json(hal)[0]["status"] == "succeeded"


def test_events_follow_pretty_and_json(hal: Hal) -> None:
    task_id = start_detached(hal)
    pretty = hal("task", "events", "-f", task_id, timeout=60)
    assert "phase running" in pretty.stdout and "end: succeeded" in pretty.stdout
    raw = hal("task", "events", task_id, "--json")
    records = [json.loads(line) for line in raw.stdout.splitlines()]
    assert records[-1]["type"] == "task_end"
    text = "".join(r["text"] for r in records if r["type"] == "output")
    assert all(f"line-{i}" in text for i in range(1, 6))


def test_attach_opens_the_live_agent(hal: Hal, hal_env: dict[str, str], sock_dir: Path) -> None:
    task_id = start_detached(hal, "sh -c 'echo attached-view; sleep 30'")
    deadline = time.monotonic() + 20
    while tasks_json(hal)[0]["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    tmux = shutil.which("tmux")
    assert tmux is not None
    outer = [tmux, "-S", str(sock_dir / "outer.sock")]
    env_args = [
        arg for key in ("HAL_HOME", "XDG_CONFIG_HOME") for arg in ("-e", f"{key}={hal_env[key]}")
    ]
    subprocess.run(
        [
            *outer,
            "new-session",
            "-d",
            *env_args,
            "-x",
            "120",
            "-y",
            "20",
            sys.executable,
            "-m",
            "hal9999",
            "task",
            "attach",
            task_id,
        ],
        check=True,
    )
    screen = ""
    deadline = time.monotonic() + 15
    while "attached-view" not in screen and time.monotonic() < deadline:
        screen = subprocess.run(
            [*outer, "capture-pane", "-p"], capture_output=True, text=True
        ).stdout
        time.sleep(0.1)
    subprocess.run([*outer, "kill-server"], check=False)
    assert "attached-view" in screen
    assert hal("task", "cancel", task_id).returncode == 0
    again = hal("task", "attach", task_id)
    assert again.returncode == 9 and "nothing to attach" in again.stderr


def test_doctor_reports_tools_and_agents(hal: Hal, tmp_path: Path) -> None:
    out = hal("doctor", "--json", timeout=120)
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("git", "tmux", "bubblewrap", "bwrap sandbox"):
        assert checks[name]["ok"], checks[name]
    assert report["ok"] and out.returncode == 0
    for agent in ("claude", "codex", "opencode", "aider", "goose", "gemini"):
        check = checks[f"agent {agent}"]
        assert check["ok"] or check["fix"], check
    # The text form of the same report: the agent CLIs answer at once this time
    # (tests/cli/quick_agents.py), the real ones were asked above.
    quick = quick_agents_path(tmp_path / "quick-agents", os.environ["PATH"])
    text = hal("doctor", env={"PATH": quick}, timeout=120).stdout
    assert "bubblewrap" in text and "required checks passed" in text


def test_doctor_says_how_to_fix_missing_tools(hal: Hal, tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    out = hal("doctor", env={"PATH": str(bare)}, timeout=60)
    assert out.returncode == 1
    assert "apt-get install tmux" in out.stdout and "apt-get install bubblewrap" in out.stdout
