"""The gateway's door (gateway/door.py): how long a connection may take to send a request,
and how many of one sandbox may wait at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import call, client, grant_for

from hal9999.gateway.proxy import Gateway


async def test_a_silent_connection_is_closed_after_its_time_to_send_a_request(
    gateway: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anything in a sandbox may connect without a token and say nothing: the connection
    # held a descriptor and a task of the gateway for ever.
    from hal9999.gateway import door

    gw, sock = gateway
    monkeypatch.setattr(door, "REQUEST_S", 0.3)
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nhost: gw\r\n")  # a head never finished
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # closed by the gateway
    writer.close()
    assert gw.door.total == 0


async def test_one_sandboxs_silent_connections_cannot_take_the_room_of_every_call(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    gw.door.per_peer = 3
    grant = grant_for(upstream)
    gw.register(grant)
    silent = [await asyncio.open_unix_connection(sock) for _ in range(3)]
    async with asyncio.timeout(10):
        while gw.door.total < 3:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(sock)
        refused = await reader.read()  # at once: no request needed to be refused
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503") and b"too_many_connections" in refused
    _, idle = silent.pop()
    idle.close()  # one goes: its room is free again
    async with asyncio.timeout(10):
        while gw.door.total > 2:
            await asyncio.sleep(0.01)
    async with client(sock) as http:
        assert (await call(http, grant.token)).status_code == 200
    for _, other in silent:
        other.close()


async def test_a_refused_connection_still_takes_its_request_so_a_relay_keeps_the_answer(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # The door answers 503 before reading the request. Closed at once, the client's write
    # of its request then failed (EPIPE), and the in-sandbox forwarder, relaying that write,
    # dropped the connection with the 503 it had already received: the agent saw a call
    # closed with no answer. The gateway now half-closes and reads what still comes.
    gw, sock = gateway
    gw.door.per_peer = 1
    grant = grant_for(upstream)
    gw.register(grant)
    silent = await asyncio.open_unix_connection(sock)
    async with asyncio.timeout(10):
        while gw.door.total < 1:
            await asyncio.sleep(0.01)
    late = socket.socket(socket.AF_UNIX)
    late.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(late, sock)
    answer = b""
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(late, 4096):  # up to the gateway's EOF
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
    request = (f"POST /v1/messages HTTP/1.1\r\nhost: gw\r\nx-api-key: {grant.token}\r\n"
               "content-length: 2\r\n\r\n{}").encode()  # fmt: skip
    async with asyncio.timeout(10):
        await loop.sock_sendall(late, request)  # EPIPE when the gateway had closed
        late.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(late, 4096) == b""
    late.close()
    async with asyncio.timeout(10):
        while gw.door.lingering:
            await asyncio.sleep(0.01)
    silent[1].close()


CHILD = """
import socket, subprocess, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected", flush=True)
if len(sys.argv) > 2:  # a namespace of its own inside this one: still this sandbox
    inner = ["unshare", *sys.argv[2:], sys.executable, "-c", CODE, sys.argv[1]]
    sys.exit(subprocess.run(inner).returncode)
sys.stdout.write(s.recv(200).decode(errors="replace"))
"""
CHILD = f"CODE = {CHILD!r}\n{CHILD}"


async def test_a_sandbox_in_its_own_pid_namespace_has_its_own_places(
    gateway: tuple[Gateway, str],
) -> None:
    """Keyed by uid, every sandbox of a hal running as an ordinary user (all one uid) shared
    the places: one agent's silent connections refused every other's. A peer is now its pid
    namespace (a bwrap sandbox's own), read from a pidfd of the connecting process."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    gw, sock = gateway
    gw.door.per_peer = 2
    here = [await asyncio.open_unix_connection(sock) for _ in range(2)]  # this one's full
    async with asyncio.timeout(10):
        while gw.door.total < 2:
            await asyncio.sleep(0.01)
    flags = ["--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        flags += ["--user", "--map-root-user"]
    child = await asyncio.create_subprocess_exec(
        "unshare", *flags, sys.executable, "-c", CHILD, sock,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        async with asyncio.timeout(20):
            line = await child.stdout.readline()
            assert line == b"connected\n", line
            while gw.door.total < 3 and child.returncode is None:
                await asyncio.sleep(0.01)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.01):
                        refused = await child.stdout.read()
                        assert not refused.startswith(b"HTTP/1.1 503"), refused
        assert gw.door.total == 3  # admitted: its sandbox's own places
        assert len(gw.door.waiting) == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        for _, writer in here:
            writer.close()


async def test_a_namespace_made_inside_a_sandbox_is_still_that_sandbox(
    gateway: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that makes a pid namespace inside its sandbox (a root hal's sandbox may make
    user namespaces) would be a new peer with places of its own, and enough of them every
    place of the gateway: it counts as the sandbox it is in."""
    from hal9999.gateway import door

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    gw, sock = gateway
    gw.door.per_peer = 1
    monkeypatch.setattr(door, "REQUEST_S", 3.0)  # an admitted silent one ends the test soon
    flags = ["--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        flags += ["--user", "--map-root-user"]
    child = await asyncio.create_subprocess_exec(
        "unshare", *flags, sys.executable, "-c", CHILD, sock, *flags,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            said, _ = await child.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
    assert said.startswith(b"connected\nconnected\nHTTP/1.1 503"), said


HOLDER = """
import os, socket, sys, time
if os.fork():  # the namespace's first process stays (its exit would end the namespace)
    os.wait()  # the process that connected has exited and is reaped
    print("held", flush=True)
    time.sleep(30)
    os._exit(0)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
if os.fork() == 0:  # the child holds the socket; the process that connected exits
    time.sleep(30)
os._exit(0)
"""


def test_a_connection_whose_connecting_process_exited_is_not_its_uids_peer(
    sock_dir: Path,
) -> None:
    """A sandbox process that connects, forks a child to hold the socket and exits has no pid
    namespace to read: it was keyed by its uid, the peer every forwarded sandbox (qemu,
    docker, ssh: the host's forwarder connects) and host process of that uid shares, so one
    agent under a hal running as an ordinary user filled their 64 places. It is
    ``("exited", uid)``, a peer of its own."""
    from hal9999.gateway import door

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    if tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2]) < (6, 5):
        pytest.skip("SO_PEERPIDFD is Linux 6.5")
    path = str(sock_dir / "door.sock")
    flags = ["--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        flags += ["--user", "--map-root-user"]
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        child = subprocess.Popen(
            ["unshare", *flags, sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"held\n"
            conn, _ = server.accept()  # the connecting process is gone (no accept before it)
            with conn:
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))[1]  # fmt: skip
                peer = door.peer_of(cast(asyncio.StreamWriter, _Writer(conn)))
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
    assert peer == ("exited", uid)


class _Writer:
    """What :func:`door.peer_of` reads of an asyncio writer: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> socket.socket:
        return self.sock
