"""The sweep of the tmux socket directory removes the dead entries hal left, and only those
(:mod:`hal9999.process.tmuxsweep`). Each test has a directory of its own (never the shared
per-uid one: the other worker's live tests use it), short as a Unix socket's path must be."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.process import tmuxsweep
from hal9999.process.tmuxsweep import MIN_AGE_S, sweep

LATER = MIN_AGE_S + 5  # the sweep's clock, that much after the entries were made
RUN, OTHER = "0123456789abcdef0123", "fedcba9876543210fedc"
SHARED = "s-00112233445566778899"


@pytest.fixture
def sockets() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="hs") as tmp:
        directory = Path(tmp, "d")
        directory.mkdir(mode=0o700)
        yield directory


def _later(directory: Path, **options: int) -> int:
    return sweep(str(directory), now=time.time() + LATER, **options).removed


def _dead_socket(path: Path) -> None:
    """A socket whose server has ended (tmux leaves it behind): a connect is refused."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()


def _live_socket(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    return server


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_each_kind_of_leftover_goes(sockets: Path) -> None:
    dead = _dead_pid()
    _dead_socket(sockets / RUN)  # a killed hal's run: its server ended, its socket stays
    _dead_socket(sockets / SHARED)  # a shared server that ended with its last run
    _dead_socket(sockets / "e-123-0a1b2c3d")  # an early pane's server, its hal killed
    os.mkfifo(sockets / f"e-{dead}-0a1b2c3d.fifo")  # ... and its FIFO
    os.mkfifo(sockets / f"w-001122334455-{dead}-3")  # a killed daemon's warm pane
    os.symlink(sockets / SHARED, sockets / OTHER)  # a daemon run's link to a dead server
    os.symlink(sockets / "s-99999999999999999999", sockets / "aaaaaaaaaaaaaaaaaaaa")  # gone
    (sockets / f"{OTHER[:-1]}9.lock").write_bytes(b"")  # a killed tmux client's lock
    (sockets / ".swept-1-00000000").write_bytes(b"")  # a killed sweep's
    assert _later(sockets) == 9
    assert os.listdir(sockets) == []


def test_live_servers_and_live_hals_keep_their_entries(sockets: Path) -> None:
    server = _live_socket(sockets / RUN)
    os.mkfifo(sockets / f"e-{os.getpid()}-0a1b2c3d.fifo")  # its hal lives
    os.mkfifo(sockets / f"w-001122334455-{os.getpid()}-1")
    (sockets / "notes.txt").write_bytes(b"")  # not a name hal gives
    _dead_socket(sockets / "ab")  # nor this
    try:
        assert _later(sockets) == 0
    finally:
        server.close()
    assert len(os.listdir(sockets)) == 5


def test_an_entry_made_now_stays(sockets: Path) -> None:
    _dead_socket(sockets / RUN)  # bound, not yet listening: as a server being started
    os.symlink(sockets / SHARED, sockets / OTHER)  # linked, its session not yet made
    assert sweep(str(sockets)).removed == 0  # now: younger than MIN_AGE_S
    assert sorted(os.listdir(sockets)) == [RUN, OTHER]


def test_a_socket_whose_server_is_being_started_stays(sockets: Path) -> None:
    # A tmux client starting a server at the path holds tmux's lock from its refused
    # connect until its server listens.
    _dead_socket(sockets / RUN)
    lock = os.open(sockets / f"{RUN}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        assert _later(sockets) == 0
    finally:
        os.close(lock)
    assert sorted(os.listdir(sockets)) == [RUN, f"{RUN}.lock"]


def test_an_entry_made_at_its_path_during_the_check_stays(
    sockets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hal makes a new entry at the path between the sweep's check and its removal (a
    # resumed run of the same spec: its link to a live server).
    _dead_socket(sockets / RUN)
    server = _live_socket(sockets / SHARED)
    checked, asked = tmuxsweep._refused, []

    def replaced(path: str) -> bool:
        refused = checked(path)
        asked.append(path)
        if asked.count(str(sockets / RUN)) == 2:  # its last check (lock held): refused
            os.unlink(path)
            os.symlink(sockets / SHARED, path)
        return refused

    monkeypatch.setattr(tmuxsweep, "_refused", replaced)
    try:
        assert _later(sockets) == 0
    finally:
        server.close()
    assert os.readlink(sockets / RUN) == str(sockets / SHARED)
    assert sorted(os.listdir(sockets)) == [RUN, SHARED]


def test_another_uids_entries_stay(sockets: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("only root makes another uid's files")
    _dead_socket(sockets / RUN)
    os.mkfifo(sockets / f"e-{_dead_pid()}-0a1b2c3d.fifo")
    for name in os.listdir(sockets):
        os.lchown(sockets / name, 12345, 12345)
    assert _later(sockets) == 0
    _dead_socket(sockets / OTHER)
    os.chown(sockets, 12345, 12345)  # a directory not this uid's: nothing in it is hal's
    assert _later(sockets) == 0
    assert len(os.listdir(sockets)) == 3


def test_a_pass_looks_at_most_at_its_bound(sockets: Path) -> None:
    dead = _dead_pid()
    for n in range(5):
        os.mkfifo(sockets / f"w-001122334455-{dead}-{n}")
    later = time.time() + LATER
    assert sweep(str(sockets), now=later, most=2) == (2, True)  # 3 not looked at
    assert sweep(str(sockets), now=later) == (3, False)


@pytest.mark.tmux
def test_links_to_a_live_server_go_with_their_session(sockets: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed")
    shared = str(sockets / SHARED)
    start = [tmux, "-S", shared, "-f", "/dev/null", "new-session", "-d", "-s"]
    subprocess.run([*start, f"run-{RUN[:8]}", "sleep", "300"], check=True)
    try:
        os.symlink(shared, sockets / RUN)  # its run's session lives
        os.symlink(shared, sockets / OTHER)  # its run ended (adopted: nobody removed it)
        assert _later(sockets) == 1
        assert sorted(os.listdir(sockets)) == [RUN, SHARED]
    finally:
        subprocess.run([tmux, "-S", shared, "kill-server"], check=False)
