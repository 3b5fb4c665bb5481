"""The gateway of a HAL_HOME deep enough that its sockets' paths pass ``sun_path``'s 107
bytes (a test's home under xdist's ``popen-gwN``), and a gateway that fails to start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hal9999.gateway.channel import GatewayPaths, gateway_pid

pytestmark = [pytest.mark.timeout(120)]


def detach(home: Path, log: Path) -> int:
    """``python -m hal9999.gateway --detach`` (its output in ``log``, as hal starts it): 0
    once a gateway listens, 1 if none does."""
    argv = [sys.executable, "-m", "hal9999.gateway", "--home", str(home), "--detach"]
    with log.open("wb") as out:
        return subprocess.run(argv, stdout=out, stderr=out, timeout=90, check=False).returncode


async def test_a_deep_home_has_a_gateway(
    tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The two-worker suite: every gateway of a home 108 bytes deep exited before
    # listening on egress.sock, and each run failed after 60 s with "did not start".
    monkeypatch.setenv("HAL_GATEWAY_IDLE_S", "60")
    home = sock_dir / ("h" * (82 - len(str(sock_dir)) - 1))
    paths = GatewayPaths(home)
    assert len(str(paths.egress_socket)) > 107 >= len(str(paths.control))
    log = tmp_path / "gateway.out"
    assert await asyncio.to_thread(detach, home, log) == 0, log.read_text()
    assert all(p.is_socket() for p in (paths.socket, paths.egress_socket, paths.control))
    pid = await gateway_pid(paths)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def test_a_gateway_that_cannot_start_says_why(tmp_path: Path) -> None:
    # The detached gateway ends with os._exit, which prints nothing of an exception: its
    # reason went nowhere, and its log (which is its stderr) stayed empty.
    home = tmp_path / "home"
    home.mkdir()
    (home / "gateway").write_text("not a directory")
    log = tmp_path / "gateway.out"
    assert detach(home, log) == 1
    said = log.read_text()
    assert "Traceback" in said and "FileExistsError" in said, said


def deep_socket(base: Path) -> Path:
    """A listening socket's path of 130 bytes (bound through its directory) under ``base``
    (the test's sock_dir: one under a deep tmp_path is deeper, but not by a known length)."""
    directory = base / ("d" * (120 - len(str(base))))
    directory.mkdir()
    return directory / "egress.sock"


async def test_the_host_side_connects_a_socket_past_sun_path(sock_dir: Path) -> None:
    # The Kubernetes socket mux and the gateway's forwarders reach egress.sock through
    # connect_unix: on a deep home its path went to connect() whole and failed.
    from hal9999.gateway.forwarder import connect_unix
    from hal9999.unixsock import bound

    path = deep_socket(sock_dir)
    assert len(str(path)) > 107
    server = bound(path)
    server.listen()
    with server, await connect_unix(str(path)) as client:
        peer, _ = server.accept()
        with peer:
            client.setblocking(True)
            client.sendall(b"hi")
            assert peer.recv(2) == b"hi"


def test_a_held_path_reaches_a_deep_socket_for_the_process(sock_dir: Path) -> None:
    # The ssh relay hands asyncssh a path to connect for every forwarded connection.
    import socket

    from hal9999.unixsock import bound, held

    path = deep_socket(sock_dir)
    server = bound(path)
    server.listen()
    short = held(path)
    assert len(short) <= 107 and held(sock_dir / "s") == str(sock_dir / "s")
    for _ in range(2):  # still reachable after the first connection
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(short)
            server.accept()[0].close()
    server.close()


def test_a_deep_socket_is_forwarded_through_a_link_in_the_run_directory(sock_dir: Path) -> None:
    # ssh refused `-R 127.0.0.1:PORT:<108-byte path>` ("Bad remote forwarding
    # specification"): the QEMU provider's forward to egress.sock on a deep home.
    import socket

    from hal9999.unixsock import bound, linked

    path = deep_socket(sock_dir)
    server = bound(path)
    server.listen()
    run = sock_dir / "run"
    run.mkdir(mode=0o700)
    assert linked(sock_dir / "s", run) == str(sock_dir / "s")  # a path that fits, as it is
    short = linked(path, run)
    assert len(short) <= 107 and short.startswith(str(run))
    assert linked(path, run) == short  # the link is made once
    with server, socket.socket(socket.AF_UNIX) as client:  # another process could, too
        client.connect(short)
        server.accept()[0].close()
    with pytest.raises(OSError, match="too long"):
        linked(path, sock_dir / ("r" * 100))


def test_a_rested_task_is_told_to_the_control_socket_of_a_deep_home(sock_dir: Path) -> None:
    # tell_rested connected control.sock by its path: past sun_path it failed (silently, by
    # design), and a killed runner's grant lived on until the gateway's next check.
    from hal9999.gateway.rested import tell_rested
    from hal9999.unixsock import bound

    home = sock_dir / ("h" * (100 - len(str(sock_dir))))
    paths = GatewayPaths(home)
    paths.root.mkdir(parents=True)
    assert len(str(paths.control)) > 107
    server = bound(paths.control)
    server.listen()
    server.settimeout(10)
    with server:
        tell_rested(home, "t-1")
        peer, _ = server.accept()
        with peer:
            assert peer.recv(200) == b'{"op": "rested", "task_id": "t-1"}\n'
