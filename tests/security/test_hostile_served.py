"""A hostile agent under ``hal serve``, whose runs share one tmux server: it cannot
reach that server's socket (so neither another run's pane nor its environment), sees no tmux
variable, and keeps nothing running, nor a session, after its run."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.conftest import demo_repo, hal, hal_env
from tests.support.daemon import _running
from tests.support.hal import Hal, git, tasks_json

from hal9999.process.tmux import shared_socket

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(300)]
__all__ = ["demo_repo", "hal", "hal_env"]  # the fixtures these tests take

# This test process's own: the check below looks at every host process, and another session
# running this test at the same moment has its own leftovers alive until its run ends.
MARK = f"hal-hostile-leftover-{os.urandom(4).hex()}"
HOSTILE = rf"""#!/bin/sh
# Looks for the shared tmux server and tries to outlive its run; changes nothing on the host.
{{
echo "env-begin"; env; echo "env-end"
echo "tmux-dirs=$(ls -d /tmp/hal9999-tmux-* 2>/dev/null | wc -l)"
for sock in $(find / -type s 2>/dev/null | grep -v '^/proc/'); do
    echo "socket=$sock"
    tmux -S "$sock" list-sessions -F 'session=#{{session_name}}' 2>/dev/null
    tmux -S "$sock" show-environment -g 2>/dev/null | sed 's/^/global-env=/'
done
tmux list-sessions 2>/dev/null && echo "default-server=yes" || echo "default-server=no"
}} > report.txt 2>&1
setsid sh -c 'sleep 300; : {MARK}' </dev/null >/dev/null 2>&1 &
nohup sh -c 'sleep 300; : {MARK}' </dev/null >/dev/null 2>&1 &
sleep 0.2
echo "spawned=$(ps -eo args 2>/dev/null | grep -c '^sh -c sleep 300; : {MARK}')" >> report.txt
"""


@pytest.fixture
def served_repo(hal: Hal, demo_repo: Path) -> Iterator[Hal]:
    (demo_repo / "hostile.sh").write_text(HOSTILE)
    gitc = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*gitc, "add", "-A"], cwd=demo_repo, check=True, capture_output=True)
    subprocess.run([*gitc, "commit", "-qm", "hostile"], cwd=demo_repo, check=True,
                   capture_output=True)  # fmt: skip
    assert hal("serve", "--detach").returncode == 0
    yield hal
    for task in tasks_json(hal):
        if task["status"] in ("running", "queued"):
            hal("task", "cancel", task["id"])
    assert hal("serve", "--stop").returncode == 0


def _marked() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARK.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def _sessions(socket: Path) -> list[str]:
    done = subprocess.run(["tmux", "-S", str(socket), "list-sessions", "-F", "#{session_name}"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout.split()


def test_a_hostile_agent_cannot_reach_the_shared_tmux_server_nor_outlive_its_run(
    served_repo: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    hal = served_repo
    shared = shared_socket(Path(hal_env["HAL_HOME"]) / "run")
    other = _running(hal)  # another run's live pane on the same server
    # The holder and that run's (an idle warm pane is no run's).
    assert len([s for s in _sessions(shared) if not s.startswith("hal-warm-")]) == 2
    done = hal("run", "--agent", "sh hostile.sh", "look around")
    assert done.returncode == 0, done.stdout + done.stderr
    [task] = [t for t in tasks_json(hal) if t["id"] != other]
    assert task["status"] == "succeeded", task
    report = git(demo_repo, "show", f"{task['branch']}:report.txt")
    inside = report[report.index("env-begin") : report.index("env-end")]
    assert "TMUX" not in inside and str(shared) not in inside, inside
    assert "tmux-dirs=0" in report, report
    assert "session=" not in report and "global-env=" not in report, report
    assert "default-server=no" in report, report
    assert "spawned=2" in report, report  # it did leave two behind, inside
    deadline = time.monotonic() + 10
    while _marked() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked() == [], "the agent's processes outlived its run"
    runs = [s for s in _sessions(shared) if not s.startswith("hal-warm-")]  # a refilled one
    assert len(runs) == 2, f"the run's session outlived it: {runs}"
    assert hal("task", "cancel", other).returncode == 0
