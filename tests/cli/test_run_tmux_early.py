"""An in-process ``hal run`` opens its tmux server and its pane's supervisor while it imports
(:mod:`hal9999.process.tmuxearly`): the run claims that pane, starts no second
server, hands it only its own environment, and leaves nothing behind; a pane no run claims
ends with it. Counted in a subprocess, so load cannot make this pass or fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.process import servers

from hal9999.process.tmuxearly import SOCKET_DIR

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

RUN_AND_WATCH = """
import atexit, json, runpy, sys
atexit.register(lambda: None)  # the run then exits as usual, through the lines below
from hal9999.process import tmux, tmuxearly
opened = []  # whether the config had been imported when the pane was opened
sockets = []  # the early server's socket
real_open = tmuxearly.open_early
def open_early(*args):
    opened.append("hal9999.config" in sys.modules)
    real_open(*args)
    sockets.append(tmuxearly._early.socket)
tmuxearly.open_early = open_early
clients = []  # the tmux clients the manager ran (after the early one)
real_run_host = tmux.run_host
async def run_host(argv, **kw):
    clients.append([str(arg) for arg in argv])
    return await real_run_host(argv, **kw)
tmux.run_host = run_host
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit as exc:
    sys.stderr.write("\\nexit " + str(exc.code))
found = {"opened": opened, "clients": clients, "left": tmuxearly._early is not None,
         "sockets": sockets}
sys.stderr.write("\\n" + json.dumps(found))
"""


def _run(env: dict[str, str], repo: Path, *argv: str, daemonless: bool = True) -> dict[str, object]:
    more = {"HAL_NO_DAEMON": "1"} if daemonless else {}
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_WATCH, "run", *argv],
        cwd=repo, env={**env, **more}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    *_, status, found = done.stderr.splitlines()
    assert status in ("exit 0", "exit None"), done.stderr[-2000:]
    result: dict[str, object] = json.loads(found)
    return result


@pytest.fixture
def private_tmp(hal_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``hal_env`` with a TMPDIR of the test's own, so the socket directory
    (``tempfile.gettempdir()``'s) holds only this test's run's files: another worker's runs
    open and claim panes in the shared one meanwhile. Short, as a Unix socket's path must be."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="h") as tmp:
        yield {**hal_env, "TMPDIR": tmp}


def _early_files(env: dict[str, str]) -> set[str]:
    """The early panes' sockets and FIFOs in ``env``'s socket directory."""
    directory = Path(env["TMPDIR"], Path(SOCKET_DIR).name)
    names = os.listdir(directory) if directory.is_dir() else []
    return {name for name in names if name.startswith("e-")}


def test_the_run_claims_the_pane_it_opened_while_it_imported(
    private_tmp: dict[str, str], demo_repo: Path
) -> None:
    hal_env = private_tmp
    env = {**hal_env, "HAL_TEST_NOT_FORWARDED": "hal-only-9f2c"}
    agent = "sh -c 'env; test -n \"$GIVEN\"' {{prompt_file}}"
    found = _run({**env, "GIVEN": "given-5e1a"}, demo_repo, "--agent", agent, "--env", "GIVEN", "x")
    assert found["opened"] == [False]  # before the config (and the rest) was imported
    clients = found["clients"]
    assert isinstance(clients, list)
    # The run's session is the early pane, renamed: no tmux server started on its path.
    assert not [argv for argv in clients if "start-server" in argv], clients
    assert [argv for argv in clients if "rename-session" in argv], clients
    assert found["left"] is False
    assert _early_files(hal_env) == set()  # its socket and FIFO renamed or removed
    # The pane's command had the run's environment, never hal's own (only the run's
    # variables come through the FIFO; the server's global environment is empty).
    (session,) = Path(hal_env["HAL_HOME"], "sessions").iterdir()
    log = (session / "agent.log").read_text()
    assert "GIVEN=" in log
    assert "hal-only-9f2c" not in log and "HAL_TEST_NOT_FORWARDED" not in log


def test_a_pane_no_run_claims_ends_with_the_run(
    private_tmp: dict[str, str], demo_repo: Path
) -> None:
    # The config names another process manager: the pane, opened before the config was
    # read, is let go at the end: its supervisor reads its FIFO's end, its server ends.
    hal_env = private_tmp
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('process_manager = "direct"\n')
    found = _run(hal_env, demo_repo, "--agent", "true {{prompt_file}}", "x")
    assert found["opened"] == [False]
    assert found["clients"] == []  # direct ran it
    assert found["left"] is False
    assert _early_files(hal_env) == set()
    sockets = found["sockets"]
    assert isinstance(sockets, list) and len(sockets) == 1
    deadline = time.monotonic() + 20
    while servers(Path(sockets[0])):
        assert time.monotonic() < deadline, "the unclaimed pane's server outlived the run"
        time.sleep(0.05)


def test_no_pane_is_opened_for_another_process_manager(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    argv = ("--agent", "true {{prompt_file}}", "--process-manager", "direct", "x")
    assert _run(hal_env, demo_repo, *argv)["opened"] == []


def test_a_run_with_no_daemon_running_claims_one_too(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # Without HAL_NO_DAEMON: no daemon runs for the home, so the run is this process's.
    found = _run(hal_env, demo_repo, "--agent", "true {{prompt_file}}", "x", daemonless=False)
    assert found["opened"] == [False]
    clients = found["clients"]
    assert isinstance(clients, list)
    assert [argv for argv in clients if "rename-session" in argv], clients
    assert not [argv for argv in clients if "start-server" in argv], clients


def test_a_run_leaves_no_entry_in_the_socket_directory(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # A private TMPDIR: the socket directory (tempfile.gettempdir()'s) is this test's own.
    # Short, as a Unix socket's path must be.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="h") as tmp:
        found = _run({**hal_env, "TMPDIR": tmp}, demo_repo, "--agent", "true {{prompt_file}}", "x")
        clients = found["clients"]
        assert isinstance(clients, list)
        assert [argv for argv in clients if "rename-session" in argv], clients  # its server
        sockets = Path(tmp, f"hal9999-tmux-{os.getuid()}")
        assert sockets.is_dir()
        assert sorted(os.listdir(sockets)) == []  # the run's socket went with its end
