"""A burst of connections before the gateway accepts them: none may be closed with no answer.

A unix connect past the listener's backlog fails at once (EAGAIN). The gateway listened with
asyncio's default backlog (100), and the python forwarder's asyncio connect took the EAGAIN
for a connect in progress: it got an unconnected socket and closed the agent's call with no
answer at all (seen in CI under load as calls answered ``none``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.gateway import GATEWAY, RUNNERS, _connect, _read_all

from hal9999.gateway import door, forwarder
from hal9999.gateway import server as gateway_server
from hal9999.gateway.channel import GatewayPaths


async def test_the_gateways_sockets_hold_a_burst_past_asyncios_default_backlog(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_server, "STALE_CHECK_S", 3600.0)
    paths = GatewayPaths(sock_dir / "home")  # connected by path below
    paths.root.mkdir(parents=True)
    gateway_server.prepare_channel(paths)
    server = gateway_server.GatewayServer(paths, idle_s=3600.0)
    ready_read, ready_write = os.pipe()
    serving = asyncio.ensure_future(server.run(ready_write))
    await asyncio.to_thread(os.read, ready_read, 16)
    os.close(ready_read)
    burst = 300  # past asyncio's 100, within the door's bound: each must be accepted
    assert burst < door.IN_ALL
    held: list[socket.socket] = []
    refused = {}
    try:
        # No await in between: the gateway's loop (this one) accepts none of them meanwhile.
        for sock_path in (paths.socket, paths.egress_socket):
            refused[sock_path.name] = 0
            for _ in range(burst):
                conn = socket.socket(socket.AF_UNIX)
                conn.setblocking(False)
                held.append(conn)
                try:
                    conn.connect(str(sock_path))
                except BlockingIOError:
                    refused[sock_path.name] += 1
        assert refused == {"llm.sock": 0, "egress.sock": 0}
    finally:
        for conn in held:
            conn.close()
        paths.lock.unlink(missing_ok=True)  # run() ends when its HAL_HOME's lock goes
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await server.gateway.aclose()
        server.store.close()


@contextlib.contextmanager
def _forwarder(kind: str, path: str) -> Iterator[int]:
    launcher = subprocess.Popen(
        ["sh", "-c", '"$@" && exec sleep 60', "launcher", *RUNNERS[kind],
         str(GATEWAY / f"forwarder.{kind}"), "0", path], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert launcher.stdout is not None
        yield int(launcher.stdout.readline())
    finally:
        launcher.kill()
        launcher.wait()
        if launcher.stdout is not None:
            launcher.stdout.close()


def _fill(path: str) -> list[socket.socket]:
    """Connections to ``path`` until its backlog is full."""
    held = []
    while True:
        conn = socket.socket(socket.AF_UNIX)
        conn.setblocking(False)
        held.append(conn)
        try:
            conn.connect(path)
        except BlockingIOError:
            conn.close()
            held.pop()
            return held


@pytest.mark.parametrize("kind", ["py", "pl"])
def test_the_forwarder_waits_for_room_in_a_full_backlog(sock_dir: Path, kind: str) -> None:
    path = str(sock_dir / "llm.sock")
    with socket.socket(socket.AF_UNIX) as gateway, _forwarder(kind, path) as port:
        gateway.bind(path)
        gateway.listen(0)
        held = _fill(path)  # a gateway whose loop is busy: it accepts nothing for now
        client = _connect(port)
        with client:
            client.settimeout(30)
            client.sendall(b"request")
            client.shutdown(socket.SHUT_WR)
            time.sleep(0.5)  # the forwarder's connect finds no room meanwhile
            for conn in held:
                conn.close()
            answer: list[bytes] = []

            def serve() -> None:  # the gateway is free again: it accepts all (the forwarder's)
                gateway.settimeout(30)
                while True:
                    try:
                        conn, _ = gateway.accept()
                    except OSError:
                        return
                    with conn:
                        conn.settimeout(30)
                        if _read_all(conn) == b"request":
                            conn.sendall(b"answer")
                            return

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            answer.append(_read_all(client))
            thread.join(30)
        assert answer == [b"answer"], "the call was closed with no answer"


@pytest.mark.parametrize("kind", ["py", "pl"])
def test_the_forwarder_answers_503_when_the_gateway_cannot_be_reached(
    sock_dir: Path, kind: str
) -> None:
    path = str(sock_dir / "llm.sock")  # nothing listens there (a gateway restarting)
    with _forwarder(kind, path) as port, _connect(port) as client:
        client.settimeout(30)
        client.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n{}")
        answer = _read_all(client)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(body) in head and b"gateway_busy" in body


async def test_the_forwarder_gives_up_on_a_backlog_full_past_its_bound(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarder, "CONNECT_S", 0.3)
    path = str(sock_dir / "llm.sock")
    with socket.socket(socket.AF_UNIX) as gateway:
        gateway.bind(path)
        gateway.listen(0)
        held = _fill(path)
        with pytest.raises(BlockingIOError):  # and not an unconnected socket
            await forwarder.connect_unix(path)
        for conn in held:
            conn.close()
