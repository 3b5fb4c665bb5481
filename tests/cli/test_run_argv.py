"""``hal run``'s options read without click: every command line the light parser reads, it
reads as click does; every other one it leaves to click. Either way the
run takes the same path: the daemon's thin client, or the full one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from tests.support.cli import IMPORTED

from hal9999.cli.main import cli
from hal9999.cli.run_argv import parse

AGENT = "true {{prompt_file}}"

READ = [
    ["x"],
    ["--agent", AGENT, "x"],
    ["x", "--agent", AGENT],
    [f"--agent={AGENT}", "fix it"],
    ["--agent", AGENT, "-"],
    ["--prompt-file", "-", "--agent", AGENT],
    ["--prompt-file=p.txt"],
    ["--repo", "../other", "--ref", "main", "x"],
    ["--repo=", "x"],
    ["--provider", "bwrap,local", "--process-manager", "direct", "x"],
    ["--env", "A", "--env=B=c", "--secret", "S", "--env", "D", "x"],
    ["--env", "-", "x"],
    ["--egress", "example.com", "--egress-only", "none", "x"],
    ["--raw", "--json", "--detach", "--events", "x"],
    ["--json", "--json", "x"],
    ["--agent=-x", "x"],
    ["--env=", "x"],
    [],
]
"""Command lines the light parser reads (click reads them the same)."""

LEFT_TO_CLICK = [
    ["x", "y"],
    ["-h"],
    ["--help"],
    ["--", "x"],
    ["--agent"],
    ["--agent", "--json", "x"],
    ["--agent", "-x", "x"],
    ["--agent", "", "x"],
    ["--agent=", "x"],
    ["--agent", "  ", "x"],
    ["--agent", "a", "--agent", "b", "x"],
    ["--json=1", "x"],
    ["--timeout", "5", "x"],
    ["--priority", "1", "x"],
    ["--retries", "1", "x"],
    ["--max-cost", "1", "x"],
    ["--max-tokens", "1", "x"],
    ["--ag", "x", "y"],
    ["-5"],
    ["--no-such-option", "x"],
    ["--agent", AGENT, "r\u00e9sum\u00e9"],
]
"""Command lines it leaves to click (errors, help, typed options, a non-ASCII argument)."""


def clicks(argv: list[str]) -> dict[str, object]:
    """The parameters click passes ``hal run`` for ``argv``."""
    command = cli.get_command(click.Context(cli), "run")
    assert command is not None
    return dict(command.make_context("run", list(argv)).params)


@pytest.mark.parametrize("argv", READ)
def test_what_it_reads_it_reads_as_click(argv: list[str]) -> None:
    params = parse(argv)
    assert params is not None
    expected = clicks(argv)
    assert params == {k: v for k, v in expected.items() if k in params}
    # What it does not read is at click's default.
    assert {k: v for k, v in expected.items() if k not in params} == {
        "timeout": None, "priority": 0, "retries": 0, "max_cost": None, "max_tokens": None,
    }  # fmt: skip


@pytest.mark.parametrize("argv", LEFT_TO_CLICK)
def test_anything_else_goes_to_click(argv: list[str]) -> None:
    assert parse(argv) is None


def test_without_a_daemon_the_run_takes_the_full_path_without_click(tmp_path: Path) -> None:
    # No daemon for this home: the full path runs it in-process, and says what it says,
    # without importing click.
    env = {"HAL_HOME": str(tmp_path / "home"), "HAL_NO_DAEMON": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, "run", "--agent", AGENT, "x"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    assert "click" not in modules and "hal9999.cli.run_full" in modules
    assert "hal: error: " in done.stderr  # not a repository: the full path's error
    assert "Traceback" not in done.stderr


def test_a_form_it_leaves_to_click_still_runs_the_full_path(tmp_path: Path) -> None:
    env = {"HAL_HOME": str(tmp_path / "home"), "HAL_NO_DAEMON": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, "run", "--agent", AGENT, "--timeout", "30", "x"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    assert "click" in modules and "hal9999.cli.run_full" in modules
    assert "hal: error: " in done.stderr
