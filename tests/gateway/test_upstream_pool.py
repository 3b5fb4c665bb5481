"""The gateway's own upstream client: every body framing an upstream may use, kept
connections reused (and replaced when the upstream closed one), hostile answers refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hal9999.gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse

ANSWERS = {
    b"/len": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"/chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nx-trailer: t\r\n\r\n"
    ),
    b"/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/badchunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"/garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
}


class Upstream:
    """Answers by path; ``/close`` has no length (the body ends with the connection) and
    ``once`` makes every answer the connection's last without saying so."""

    def __init__(self) -> None:
        self.connections = 0
        self.once = False
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)  # fmt: skip
                await reader.readexactly(length)
                path = head.split(b" ")[1]
                if path == b"/close":
                    writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                    break
                writer.write(ANSWERS[path])
                await writer.drain()
                if self.once:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    async with up.server:
        yield up


async def body(response: UpstreamResponse) -> bytes:
    data = b""
    while chunk := await response.read():
        data += chunk
    await response.aclose()
    return data


async def test_every_framing_is_read_and_connections_are_kept(upstream: Upstream) -> None:
    pool = UpstreamPool()
    try:
        seen = []
        for path in ("/len", "/chunked", "/continue", "/empty", "/len"):
            response = await pool.request("POST", upstream.url + path, [("x", "1")], b"{}")
            seen.append((response.status, response.declared, await body(response)))
        assert seen == [(200, 5, b"hello"), (200, None, b"hello"), (200, 2, b"ok"),
                        (204, 0, b""), (200, 5, b"hello")]  # fmt: skip
        assert pool.opened == 1 and upstream.connections == 1, "one kept connection"
        response = await pool.request("POST", upstream.url + "/close", [], b"")
        assert (response.declared, await body(response)) == (None, b"until the end")
        response = await pool.request("POST", upstream.url + "/len", [], b"")
        assert await body(response) == b"hello"
        assert pool.opened == 2, "a body that ended with its connection leaves nothing to keep"
    finally:
        await pool.aclose()


async def test_a_kept_connection_the_upstream_closed_is_replaced(upstream: Upstream) -> None:
    upstream.once = True  # every connection closes after one answer, unannounced
    pool = UpstreamPool()
    try:
        for _ in range(3):
            response = await pool.request("POST", upstream.url + "/len", [], b"{}")
            assert await body(response) == b"hello"
            await asyncio.sleep(0.05)  # the upstream's close arrives while the connection idles
        assert pool.opened == 3
    finally:
        await pool.aclose()


async def test_hostile_answers_and_dead_upstreams_are_errors(upstream: Upstream) -> None:
    pool = UpstreamPool()
    try:
        response = await pool.request("POST", upstream.url + "/badchunk", [], b"")
        with pytest.raises(UpstreamError) as broke:
            await body(response)
        assert broke.value.sent
        with pytest.raises(UpstreamError) as garbage:
            await pool.request("POST", upstream.url + "/garbage", [], b"")
        assert garbage.value.sent
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        with pytest.raises(UpstreamError) as refused:
            await pool.request("POST", f"http://127.0.0.1:{port}/len", [], b"")
        assert not refused.value.sent, "a refused connect is safe to retry"
    finally:
        await pool.aclose()
