"""A hostile client of the daemon's HTTP API, over raw sockets (TCP and the unix socket), so
these hold whatever server implementation sits behind the port: no body is read before the
token is checked, bad framing gets one clear error and no traceback, and clients without the
token can hold only a bounded number of connections, for a bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.server.selfsigned import server_tls
from tests.support.gateway import host_address
from tests.support.server import AUTH, TOKEN, http_server, router

from hal9999.server.listen import HalServer

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture(params=["tcp", "unix"])
async def serve(
    request: pytest.FixtureRequest, sock_dir: Path
) -> AsyncIterator[Callable[..., Awaitable[Connect]]]:
    servers: list[HalServer] = []

    async def start(**options: Any) -> Connect:
        server = http_server(router(), TOKEN, **options)
        servers.append(server)
        if request.param == "tcp":
            port = await server.listen_tcp()
            return lambda: asyncio.open_connection("127.0.0.1", port)
        path = str(sock_dir / "api.sock")
        await server.listen_unix(path)
        return lambda: asyncio.open_unix_connection(path)

    yield start
    for server in servers:
        await server.close()


async def exchange(connect: Connect, data: bytes, *, within: float = 3.0) -> bytes:
    """Send ``data`` and read until the server closes (within ``within`` seconds)."""
    reader, writer = await connect()
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()


def status_and_code(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["code"]


async def test_an_unauthenticated_body_is_never_read(
    serve: Callable[..., Awaitable[Connect]],
) -> None:
    connect = await serve()
    # 25 clients each announce a 4 MiB body and send none of it: each gets its 401 at once,
    # without the server waiting for (or buffering) a byte of the body.
    head = b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\nContent-Length: 4194304\r\n\r\n"
    answers = await asyncio.gather(*(exchange(connect, head, within=2.0) for _ in range(25)))
    assert all(status_and_code(a) == (401, "unauthorized") for a in answers)
    wrong = (
        b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\n"
        b"Authorization: Bearer nope\r\nContent-Length: 9\r\n\r\n"
    )
    assert status_and_code(await exchange(connect, wrong, within=2.0)) == (401, "unauthorized")
    body = b'{"a": 1}'
    ok = (
        b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\n"
        b"%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    )
    answer = await exchange(connect, ok % (AUTH, len(body), body))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"body": {"a": 1}}')


@pytest.mark.parametrize(
    "length", ["abc", "-5", "1e3", " 12 4", "0x10", "99999999999999999999", "½"]
)
async def test_a_malformed_content_length_is_a_clear_400_without_a_traceback(
    serve: Callable[..., Awaitable[Connect]], length: str, caplog: pytest.LogCaptureFixture
) -> None:
    connect = await serve()
    head = f"POST /v1/echo HTTP/1.1\r\nHost: hal\r\nContent-Length: {length}\r\n"
    data = head.encode() + AUTH + b"\r\n"
    with caplog.at_level(logging.DEBUG):
        assert status_and_code(await exchange(connect, data)) == (400, "bad_request")
        for framing in (
            b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\nContent-Length: 2\r\nContent-Length: 9\r\n",
            b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\nTransfer-Encoding: chunked\r\n",
        ):
            answer = await exchange(connect, framing + AUTH + b"\r\n")
            assert status_and_code(answer) == (400, "bad_request")
        too_big = (
            b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\nContent-Length: 4194305\r\n" + AUTH + b"\r\n"
        )
        assert status_and_code(await exchange(connect, too_big)) == (413, "payload_too_large")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_header_size_and_count_are_bounded(
    serve: Callable[..., Awaitable[Connect]], caplog: pytest.LogCaptureFixture
) -> None:
    connect = await serve()
    long_line = b"GET /v1/echo HTTP/1.1\r\nHost: hal\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
    many = b"GET /v1/echo HTTP/1.1\r\nHost: hal\r\n" + b"X-A: b\r\n" * 101 + b"\r\n"
    pad = (b"X-A: " + b"b" * 4000 + b"\r\n") * 10
    big = b"GET /v1/echo HTTP/1.1\r\nHost: hal\r\n" + pad + b"\r\n"
    for data in (long_line, many, big):
        assert status_and_code(await exchange(connect, data)) == (431, "header_too_large")
    for data in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: hal\r\nno colon here\r\n\r\n"):
        assert status_and_code(await exchange(connect, data)) == (400, "bad_request")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_connections_without_the_token_are_few_and_short(
    serve: Callable[..., Awaitable[Connect]],
) -> None:
    connect = await serve(max_unauthenticated=4, head_timeout_s=0.5)
    idle = [await connect() for _ in range(4)]
    await asyncio.sleep(0.1)
    # A fifth silent connection is refused at once while four wait to authenticate...
    refused = await exchange(connect, b"", within=1.0)
    assert status_and_code(refused) == (503, "busy")
    # ...and the four are closed when they send no request in time (slowloris too).
    idle[0][1].write(b"GET /v1/echo HTTP/1.1\r\nHost: hal\r\n")
    for reader, writer in idle:
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
    # Then room is back, and an authenticated keep-alive connection no longer counts.
    reader, writer = await connect()
    body = b"{}"
    request = b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\n%sContent-Length: 2\r\n\r\n%s" % (AUTH, body)
    writer.write(request)
    await writer.drain()
    assert (await reader.readuntil(b"}}")).startswith(b"HTTP/1.1 200")
    others = [await connect() for _ in range(4)]
    writer.write(request)
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"}}"), 2.0)).startswith(b"HTTP/1.1 200")
    for _, other in [*others, (reader, writer)]:
        other.close()


async def test_a_flood_on_the_tcp_port_does_not_lock_the_owner_out_of_the_unix_socket(
    sock_dir: Path,
) -> None:
    server = http_server(router(), TOKEN, max_unauthenticated=3, head_timeout_s=5.0)
    port = await server.listen_tcp()
    path = str(sock_dir / "api.sock")
    await server.listen_unix(path)
    flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        await asyncio.sleep(0.1)
        refused = await exchange(lambda: asyncio.open_connection("127.0.0.1", port), b"")
        assert status_and_code(refused) == (503, "busy")
        ok = (
            b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\n"
            b"%sContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        answer = await exchange(lambda: asyncio.open_unix_connection(path), ok % AUTH)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        for _, writer in flood:
            writer.close()
        await server.close()


async def test_a_tls_handshake_that_never_comes_is_cut_at_the_head_deadline(
    tmp_path: Path,
) -> None:
    tls = server_tls(tmp_path)
    server = http_server(router(), TOKEN, head_timeout_s=0.5)
    port = await server.listen_tcp("127.0.0.1", 0, tls=tls)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # no handshake
        assert await asyncio.wait_for(reader.read(), 3.0) == b""  # closed (not after 60 s)
        writer.close()
    finally:
        await server.close()


async def test_every_way_a_tls_connection_ends_gives_its_peers_place_back(
    tmp_path: Path,
) -> None:
    # An address other than loopback holds few places: one leaked per failed handshake, reset
    # or deadline would lock that address (an operator's browser, a NAT) out for good.
    address = host_address()
    if address is None:
        pytest.skip("this machine has no address other than loopback")
    tls = server_tls(tmp_path)
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    server = http_server(router(), TOKEN, head_timeout_s=0.5, max_per_peer=2)
    port = await server.listen_tcp(address, 0, tls=tls)
    limits = server.listeners[0].limits

    async def settled() -> None:
        for _ in range(300):
            if limits.unauthenticated == 0 and not limits.per_peer and not limits.handshaking:
                return
            await asyncio.sleep(0.01)
        raise AssertionError((limits.unauthenticated, limits.per_peer, limits.handshaking))

    async def garbage() -> None:  # no TLS at all: the handshake fails
        reader, writer = await asyncio.open_connection(address, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: hal\r\n\r\n")
        await asyncio.wait_for(reader.read(), 5)
        writer.close()

    async def reset() -> None:  # gone mid-handshake, abortively
        sock = socket.create_connection((address, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.send(b"\x16\x03\x01\x00\xff")  # a ClientHello's record header, then nothing
        await asyncio.sleep(0.05)
        sock.close()

    async def silent() -> None:  # a handshake, then nothing: the deadline ends it
        with contextlib.suppress(OSError):  # the one past the places: refused at once
            reader, writer = await asyncio.open_connection(address, port, ssl=client)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    async def never() -> None:  # no handshake begun: the deadline ends it
        reader, writer = await asyncio.open_connection(address, port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    async def handshaken_then_reset() -> None:
        with contextlib.suppress(OSError):  # the one past the places: refused at once
            _, writer = await asyncio.open_connection(address, port, ssl=client)
            writer.transport.abort()

    try:
        for attack in (garbage, reset, silent, never, handshaken_then_reset):
            await asyncio.gather(attack(), attack(), attack())  # one more than the places
            await settled()
        reader, writer = await asyncio.open_connection(address, port, ssl=client)
        writer.write(b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\n%sContent-Length: 2\r\n"
                     b"Connection: close\r\n\r\n{}" % AUTH)  # fmt: skip
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        await server.close()
