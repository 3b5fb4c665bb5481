"""Finding a running ``hal serve`` trusts none of its files: a daemon alive (it holds
``run/serve.lock``) whose info file, socket or token is missing or garbled is one line naming
the file and the fix, never "not running" and never a run in-process beside it; a token the
daemon refuses names its file; a directory where the daemon's socket goes is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.hal import Hal, one_error_line

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


@pytest.fixture
def served(hal: Hal, hal_env: dict[str, str]) -> Iterator[Path]:
    """A running ``hal serve --detach``; its home. Its files are put back and it is stopped
    at the end (by its pid, whatever a test did to its files)."""
    home = Path(hal_env["HAL_HOME"])
    out = hal("serve", "--detach")
    assert out.returncode == 0, out.stderr
    info = (home / "run" / "serve.json").read_text()
    token = (home / "token").read_text()
    yield home
    (home / "run" / "serve.json").write_text(info)
    (home / "token").write_text(token)
    pid = json.loads(info)["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _sessions(home: Path) -> list[Path]:
    return list((home / "sessions").glob("*")) if (home / "sessions").exists() else []


@pytest.mark.parametrize(
    ("garble", "said"),
    [
        ("", "is empty"),
        ('{"pid": 12, "sock', "is not hal's JSON"),
        ("\x00\x01\x02", "is not hal's JSON"),
        ('{"pid": "x"}', "is not hal's JSON"),
    ],
    ids=["empty", "cut", "binary", "wrong-fields"],
)
def test_a_garbled_info_file_beside_a_live_daemon_is_one_line(
    hal: Hal, served: Path, garble: str, said: str
) -> None:
    info = served / "run" / "serve.json"
    info.write_text(garble)
    # (`hal task list` reads the store itself, daemon or not: it is not among them.)
    for argv in (("status",), ("run", "--agent", "true {{prompt_file}}", "x")):
        out = hal(*argv)
        line = one_error_line(out)
        assert out.returncode != 0, argv
        assert f"{info} {said}" in line and "hal serve is running" in line, (argv, line)
        assert "hal serve --stop" not in line or "kill" in line, line
    assert _sessions(served) == [], "no task ran in-process beside the daemon"


def test_a_missing_token_beside_a_live_daemon_is_one_line(hal: Hal, served: Path) -> None:
    (served / "token").unlink()
    for argv in (("status",), ("run", "--agent", "true {{prompt_file}}", "x")):
        out = hal(*argv)
        line = one_error_line(out)
        assert out.returncode != 0, argv
        assert f"{served / 'token'}" in line and "hal serve is running" in line, (argv, line)
        assert "restart" in line, line
    assert _sessions(served) == [], "no task ran in-process beside the daemon"


def test_a_token_the_daemon_refuses_names_its_file(hal: Hal, served: Path) -> None:
    (served / "token").write_text("garbage\n")
    for argv in (("status",), ("run", "--agent", "true {{prompt_file}}", "x")):
        out = hal(*argv)
        line = one_error_line(out)
        assert out.returncode != 0, argv
        assert f"{served / 'token'}" in line and "restart" in line, (argv, line)


def test_a_missing_socket_beside_a_live_daemon_is_one_line(hal: Hal, served: Path) -> None:
    socket = Path(json.loads((served / "run" / "serve.json").read_text())["socket"])
    socket.unlink()
    out = hal("status")
    line = one_error_line(out)
    assert out.returncode != 0 and f"{socket}" in line and "hal serve is running" in line, line


def test_a_stale_info_file_of_a_dead_daemon_reads_as_not_running(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    home = Path(hal_env["HAL_HOME"])
    assert hal("serve", "--detach").returncode == 0
    info = (home / "run" / "serve.json").read_text()
    pid = json.loads(info)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    (home / "run" / "serve.json").write_text("garbled")  # nobody holds the lock: stale
    out = hal("status")
    assert out.returncode == 1 and "not running" in out.stdout + out.stderr, out


def test_a_directory_where_the_socket_goes_is_one_line(hal: Hal, hal_env: dict[str, str]) -> None:
    home = Path(hal_env["HAL_HOME"])
    (home / "run" / "hal.sock").mkdir(parents=True)
    try:
        out = hal("serve", "--detach")
        line = one_error_line(out)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert f"{home / 'run' / 'hal.sock'}" in line and "directory" in line, line
    finally:
        shutil.rmtree(home / "run" / "hal.sock", ignore_errors=True)
