"""A standard output that refuses writes (``> /dev/full``, a file on a full disk) is told apart
from a full ``HAL_HOME``: one line saying the output could not be written, status 74
(``output_failed``), no traceback, and never "the disk holding hal's home is full"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

WORK = ("run", "--agent", "sh -c 'echo hi > new.txt; echo said' {{prompt_file}}",
        "--json", "x")  # fmt: skip


def to_full(hal_env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``hal ARGS > /dev/full``."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "hal9999", *args], cwd=cwd, env=hal_env, stdout=full,
            stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip


def test_commands_writing_to_a_full_output_say_so_in_one_line(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    out = hal(*WORK)
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)["id"]
    commands = [
        ("--help",), ("--version",), ("task", "list"), ("task", "list", "--json"),
        ("task", "show", task_id), ("task", "show", task_id, "--json"),
        ("task", "events", task_id), ("task", "events", task_id, "--json"),
        ("task", "diff", task_id), ("task", "logs", task_id), ("agent", "list"),
        ("sandbox", "list"), ("doctor",), ("status", "--json"), WORK,
    ]  # fmt: skip
    for argv in commands:
        done = to_full(hal_env, demo_repo, *argv)
        assert "Traceback" not in done.stderr, (argv, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.startswith("hal: error:")]
        assert len(lines) == 1, (argv, done.stderr)
        assert "standard output" in lines[0] and "hal's home" not in lines[0], (argv, lines[0])
        assert done.returncode == 74, (argv, done.returncode, done.stderr)
