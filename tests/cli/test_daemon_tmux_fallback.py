"""``hal serve`` whose shared tmux server cannot start: each run starts its own, as an
in-process run does, and nothing of them is left once they end."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.cli import _comm
from tests.support.daemon import _running
from tests.support.hal import Hal, tasks_json

from hal9999.process.tmux import shared_socket

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(300)]


@pytest.fixture
def blocked(hal_env: dict[str, str]) -> Iterator[Path]:
    """The home's shared socket taken by a directory: no tmux server can listen there."""
    socket = shared_socket(Path(hal_env["HAL_HOME"]) / "run")
    socket.parent.mkdir(mode=0o700, exist_ok=True)
    socket.mkdir()
    yield socket
    shutil.rmtree(socket, ignore_errors=True)


def _panes(home: Path) -> dict[int, int]:
    """The supervisors of ``home``'s agents, found by their argv (which names the home: with
    no shared server there is no warm pane, whose argv names only its FIFO): pid -> parent
    pid (the tmux server of its pane)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
            if _comm(int(pid)) == "tmux: server":  # keeps the argv of the client that forked it
                continue
        except OSError:
            continue
        if b"hal9999.process.supervisor" in argv and os.fsencode(str(home)) in argv:
            found[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _servers_of(home: Path) -> list[int]:
    """Live tmux servers whose socket is one of ``home``'s runs (named in their argv)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if _comm(int(pid)) != "tmux: server":
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if os.fsencode(str(home)) in environ:
            found.append(int(pid))
    return found


def test_without_the_shared_server_each_run_has_its_own(
    hal: Hal, hal_env: dict[str, str], blocked: Path
) -> None:
    home = Path(hal_env["HAL_HOME"])
    assert hal("serve", "--detach").returncode == 0
    try:
        ids = [_running(hal) for _ in range(2)]
        panes = _panes(home)
        assert len(panes) == 2
        servers = set(panes.values())
        assert len(servers) == 2, "a server of its own for each run"
        assert all(_comm(server) == "tmux: server" for server in servers)
        assert blocked.is_dir()  # nothing took the shared socket's place
        assert hal("task", "stop", ids[0]).returncode == 0
        deadline = time.monotonic() + 30
        while len(_panes(home)) != 1:
            assert time.monotonic() < deadline, "the stopped run's agent lives on"
            time.sleep(0.1)
        assert hal("task", "cancel", ids[1]).returncode == 0
        statuses = sorted(t["status"] for t in tasks_json(hal))
        assert statuses == ["cancelled", "stopped"]
    finally:
        for task in tasks_json(hal):
            if task["status"] in ("running", "queued"):
                hal("task", "cancel", task["id"])
        assert hal("serve", "--stop").returncode == 0
    deadline = time.monotonic() + 30
    while _panes(home) or any(s in _servers_of(home) for s in servers):
        assert time.monotonic() < deadline, f"left: {_panes(home)}, {_servers_of(home)}"
        time.sleep(0.1)
