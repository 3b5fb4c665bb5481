"""A ``hal`` command leaves the interpreter's last garbage collection nothing to walk: the
objects it made are frozen when it ends (issue 16: that collection was 35-45 ms of every
foreground ``hal run``, between its summary and its exit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import atexit, gc, json, sys
# Registered before hal's own handlers, so it runs after them, just before the interpreter
# clears its modules and collects what is left.
atexit.register(lambda: sys.stderr.write(
    "\\n" + json.dumps({"frozen": gc.get_freeze_count(), "left": len(gc.get_objects())})))
sys.argv = ["hal", *sys.argv[1:]]
from hal9999.cli.main import main
main()
"""


@pytest.mark.parametrize("args", [["task", "list"], ["no-such-command"]])
def test_objects_are_frozen_before_the_exit(args: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path), HAL_NO_DAEMON="1")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    counts = json.loads(proc.stderr.strip().splitlines()[-1])
    assert counts["frozen"] > 10_000  # what `hal task list` makes: ~37,000 objects
    assert counts["left"] < 100


def test_the_database_is_checkpointed_at_the_exit(tmp_path: Path) -> None:
    """The store's connections are closed before the objects are frozen: the database's
    pages are in ``hal.db``, not left in its WAL (which a backup of hal.db alone, or
    ``hal doctor``'s check of it, would miss)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path), HAL_NO_DAEMON="1")
    proc = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "list"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hal.db").stat().st_size > 4096  # the schema is in the file itself
    assert not (tmp_path / "hal.db-wal").exists()
