"""A task's runner is one process, named by its pid and its start time: once it has ended,
a later process that the kernel gave the same pid (even one whose command line names hal)
is not taken for it.

The pid is really reused: the test runs in a pid namespace of its own, where the next pid
can be set (``/proc/sys/kernel/ns_last_pid``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, subprocess, sys, time
from pathlib import Path
from hal9999.store import Store, TaskRecord
from hal9999.tasks.alive import runner_alive, waits_for_runner
from hal9999.tasks.scheduler import Scheduler

home = Path(sys.argv[1])
runner = subprocess.Popen(["hal-runner", "60"], executable="/bin/sleep")
with Store.open(home) as store:
    store.insert_task(TaskRecord(
        id="reused01", prompt="p", agent="claude", provider="bwrap", process_manager="tmux",
        repo="/r", repo_kind="local", branch="hal/reused01", status="queued",
        created_at=1.0, session_dir=str(home / "s"), runner_pid=runner.pid,
    ))
    held = store.get_task("reused01")
    before = runner_alive(held.runner_pid, held.runner_started)
    runner.kill()
    runner.wait()
    time.sleep(0.1)  # another clock tick: the next process starts later
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(runner.pid - 1))
    impostor = subprocess.Popen(["hal-impostor", "60"], executable="/bin/sleep")
    try:
        task = store.get_task("reused01")
        print(json.dumps({
            "reused": impostor.pid == runner.pid,
            "before": before,
            "after": runner_alive(task.runner_pid, task.runner_started),
            "waits": waits_for_runner(task.status, task.runner_pid, task.runner_started),
            "held_elsewhere": Scheduler.held_elsewhere(task),
        }))
    finally:
        impostor.kill()
        impostor.wait()
"""


def test_a_runner_pid_reused_by_a_process_naming_hal_is_not_the_runner(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    argv = ["unshare", "-Urpf", "--mount-proc", sys.executable, "-c", SCRIPT, str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, timeout=120)
    if done.returncode != 0 and b"unshare" in done.stderr[:200]:
        pytest.skip(f"no pid namespace here: {done.stderr[:200]!r}")
    assert done.returncode == 0, done.stderr.decode()
    found = json.loads(done.stdout)
    assert found["reused"] and found["before"], found
    assert found == {
        "reused": True,
        "before": True,
        "after": False,
        "waits": True,
        "held_elsewhere": False,
    }
