"""A ``hal`` command leaves the interpreter's last garbage collection nothing to walk: the
objects it made are frozen when it ends (that collection would stand in every
foreground ``hal run`` between its summary and its exit)."""

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


TORN_DOWN = """
import os, sys
class Marker:
    def __del__(self, write=os.write):  # the teardown may have cleared os by then
        write(2, b"\\ntorn down")
sys.teardown_marker = Marker()  # freed as the teardown clears sys (no cycle holds it)
sys.argv = ["hal", *sys.argv[1:]]
from hal9999.cli.entry import main
main()
"""


@pytest.mark.bwrap
def test_an_in_process_run_ends_without_the_teardown_and_keeps_its_record(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # Its only atexit handler is logging's, run at the end as the exit would, and its event
    # flusher sleeps with nothing to write: os._exit, not the
    # interpreter freeing every module's objects. Nothing of the run is lost.
    env = {**hal_env, "HAL_NO_DAEMON": "1"}
    argv = ["run", "--agent", "true {{prompt_file}}", "--process-manager", "direct", "x"]
    done = subprocess.run(
        [sys.executable, "-c", TORN_DOWN, *argv],
        cwd=demo_repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "succeeded" in done.stdout
    assert "torn down" not in done.stderr
    home = Path(env["HAL_HOME"])
    assert not (home / "hal.db-wal").exists()  # the stores were closed: checkpointed
    (task_id,) = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("task ")]
    shown = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "events", task_id, "--json"],
        cwd=demo_repo, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    kinds = [json.loads(line)["type"] for line in shown.stdout.splitlines()]
    assert kinds[-1] == "task_end", (kinds, shown.stderr[-2000:])


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
