"""``hal serve`` runs its tasks' agents in one tmux server: a server's start (its
option tables) is off every task's path, and a daemon killed with -9 leaves them running in it
for the next daemon to adopt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.cli import _comm
from tests.support.daemon import _running
from tests.support.hal import Hal, tasks_json
from tests.support.process import servers

from hal9999.process.tmux import shared_socket

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(300)]


def _panes(home: Path) -> dict[int, int]:
    """The supervisors of ``home``'s agents: pid -> parent pid (the tmux server of its pane).

    The panes of the runs' sessions on the daemon's shared server (not its holder's, nor an
    idle warm pane's, which is no run's: a claimed one is renamed as its run's session)."""
    listed = subprocess.run(
        ["tmux", "-S", str(shared_socket(home / "run")), "list-panes", "-a", "-F",
         "#{session_name} #{pane_pid}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = {}
    for line in listed.stdout.splitlines():
        session, pid = line.split()
        if session.startswith(("hal-holder-", "hal-warm-")):
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if b"hal9999.process.supervisor" in argv:
            found[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


@pytest.fixture
def home(served: Hal, hal_env: dict[str, str]) -> Iterator[Path]:
    yield Path(hal_env["HAL_HOME"])


def test_the_daemons_runs_share_one_tmux_server(served: Hal, home: Path) -> None:
    ids = [_running(served) for _ in range(3)]
    panes = _panes(home)
    assert len(panes) == 3
    # One server for the three (a server of each run's own was three).
    (server,) = set(panes.values())
    assert _comm(server) == "tmux: server"
    # A task's stop ends its agent alone.
    assert served("task", "stop", ids[0]).returncode == 0
    deadline = time.monotonic() + 30
    while len(_panes(home)) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert set(_panes(home).values()) == {server}
    for task_id in ids[1:]:
        served("task", "cancel", task_id)


@pytest.fixture
def own_tmp(hal_env: dict[str, str]) -> Iterator[Path]:
    """A private TMPDIR for the test's hal (set before ``served`` starts the daemon): the
    socket directory (tempfile.gettempdir()'s) is the test's own. Short, as a Unix socket's
    path must be."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="h") as tmp:
        hal_env["TMPDIR"] = tmp
        yield Path(tmp, f"hal9999-tmux-{os.getuid()}")


def test_a_daemons_run_leaves_no_link_to_its_server(own_tmp: Path, served: Hal) -> None:
    for _ in range(2):
        done = served("run", "--agent", "true {{prompt_file}}", "x")
        assert done.returncode == 0, done.stderr
    # The shared server's socket, its warm panes' FIFOs: no run's own entry (a link).
    entries = sorted(os.listdir(own_tmp))
    assert [name for name in entries if name.startswith("s-")], entries  # it was shared
    assert [name for name in entries if (own_tmp / name).is_symlink()] == []
    assert [name for name in entries if not name.startswith(("s-", "w-"))] == []


@pytest.fixture
def left(own_tmp: Path) -> list[str]:
    """Early and warm pane FIFOs of hals that are gone, left before the daemon starts (and
    one of this live process's)."""
    child = subprocess.Popen(["true"])
    child.wait()
    own_tmp.mkdir(mode=0o700)
    names = [f"e-{child.pid}-0a1b2c3d.fifo", f"w-001122334455-{child.pid}-1"]
    for name in [*names, f"e-{os.getpid()}-0a1b2c3d.fifo"]:
        os.mkfifo(own_tmp / name)
    return names


def test_a_starting_daemon_sweeps_what_dead_hals_left(
    own_tmp: Path, left: list[str], served: Hal
) -> None:
    deadline = time.monotonic() + 60
    while set(left) & set(os.listdir(own_tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set(left) & set(os.listdir(own_tmp)) == set()
    assert f"e-{os.getpid()}-0a1b2c3d.fifo" in os.listdir(own_tmp)  # a live hal's stays


def test_a_killed_daemons_agents_run_on_and_are_adopted(
    served: Hal, home: Path, reaped: None
) -> None:
    task_id = _running(served)
    ((pane, server),) = _panes(home).items()
    os.kill(json.loads((home / "run" / "serve.json").read_text())["pid"], signal.SIGKILL)
    time.sleep(0.5)
    assert _panes(home) == {pane: server}  # the agent runs on, in the same server
    assert served("serve", "--detach").returncode == 0
    assert [t["status"] for t in tasks_json(served) if t["id"] == task_id] == ["running"]
    assert _panes(home) == {pane: server}
    assert served("task", "cancel", task_id).returncode == 0


def test_a_daemon_of_the_direct_manager_starts_no_tmux_server(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    direct = {"HAL_PROCESS_MANAGER": "direct"}
    assert hal("serve", "--detach", env=direct).returncode == 0
    try:
        shared = shared_socket(Path(hal_env["HAL_HOME"]) / "run")
        done = hal("run", "--agent", "true {{prompt_file}}", "x", env=direct)
        assert done.returncode == 0, done.stderr
        # Started at the first tmux run (none here), not at the daemon's start.
        assert servers(shared) == []
    finally:
        assert hal("serve", "--stop", env=direct).returncode == 0
