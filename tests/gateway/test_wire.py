"""The agent's side of the gateway speaks its own HTTP/1.1: a hostile agent's malformed or
smuggling request is refused and never reaches the upstream; what real clients send (kept
connections, pipelining, chunked bodies, ``expect: 100-continue``, HTTP/1.0) works."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.gateway.upstream import StormUpstream

from hal9999.gateway.channel import Grant, new_token
from hal9999.gateway.proxy import Gateway
from hal9999.store import Store

KEY = "sk-real-key-wire-0123456789"
BODY = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}).encode()


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream() as server:
        yield server


@pytest.fixture
async def served(
    tmp_path: Path, sock_dir: Path, upstream: StormUpstream
) -> AsyncIterator[tuple[str, str]]:
    store = Store.open(tmp_path / "home")
    gateway = Gateway(store)
    grant = Grant(task_id="t1", token=new_token(), upstream=upstream.url, key=KEY)
    gateway.register(grant)
    sock = str(sock_dir / "llm.sock")
    server = await asyncio.start_unix_server(gateway.serve_connection, path=sock)
    async with server:
        yield sock, grant.token
    await gateway.drain()
    await gateway.aclose()
    store.close()


async def exchange(sock: str, data: bytes, *, answers: int = 1) -> list[tuple[bytes, bytes]]:
    """Send raw bytes; read ``answers`` answers (head, body by its content-length, its
    chunks, or until the connection closes)."""
    reader, writer = await asyncio.open_unix_connection(sock)
    try:
        writer.write(data)
        out = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if head.startswith(b"HTTP/1.1 100"):  # expect: 100-continue, then the answer
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            out.append((head, await asyncio.wait_for(_body(reader, head.lower()), 30)))
        return out
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    for line in lines:
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    if b"transfer-encoding: chunked" not in lines:
        return await reader.read()
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return body


def post(token: str, *, extra: bytes = b"", body: bytes = BODY, version: bytes = b"1.1") -> bytes:
    return (b"POST /v1/messages HTTP/" + version + b"\r\nhost: gw\r\nx-api-key: " + token.encode()
            + b"\r\ncontent-type: application/json\r\n" + extra
            + b"content-length: %d\r\n\r\n" % len(body) + body)  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"x-note: a\nx-smuggled: 1\r\n", b"400"),  # a bare LF: a header of its own upstream
        (b"transfer-encoding: chunked\r\n", b"400"),  # both framings: request smuggling
        (b"content-length: 7\r\n", b"400"),  # two lengths that disagree
        (b" folded: continuation\r\n", b"400"),  # obsolete line folding
        (b"x-big: " + b"a" * (70 << 10) + b"\r\n", b"431"),  # a head beyond the limit
        # 5000 digits: int() refused them, the connection closed with no answer (a traceback)
        (b"content-length: " + b"9" * 5000 + b"\r\n", b"413"),
    ],
)
async def test_malformed_requests_are_refused_and_never_forwarded(
    served: tuple[str, str], upstream: StormUpstream, extra: bytes, status: bytes
) -> None:
    sock, token = served
    [(head, body)] = await exchange(sock, post(token, extra=extra))
    assert head.split(b" ")[1] == status, head
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert upstream.seen == []


async def test_kept_pipelined_chunked_continued_and_http10_requests_work(
    served: tuple[str, str], upstream: StormUpstream
) -> None:
    sock, token = served
    chunked = (b"POST /v1/messages HTTP/1.1\r\nx-api-key: " + token.encode()
               + b"\r\ntransfer-encoding: chunked\r\n\r\n"
               + b"%x\r\n%b\r\n" % (len(BODY[:9]), BODY[:9])
               + b"%x;ext=1\r\n%b\r\n0\r\n\r\n" % (len(BODY[9:]), BODY[9:]))  # fmt: skip
    pipelined = post(token) + chunked + post(token, extra=b"expect: 100-continue\r\n")
    answers = await exchange(sock, pipelined, answers=3)
    assert [h.split(b" ")[1] for h, _ in answers] == [b"200"] * 3
    assert all(json.loads(b)["usage"]["output_tokens"] == 7 for _, b in answers)
    assert [s.body["model"] for s in upstream.seen] == ["claude-sonnet-4-5"] * 3
    assert all(s.headers["x-api-key"] == KEY for s in upstream.seen)
    assert all("expect" not in s.headers for s in upstream.seen)
    [(head, _)] = await exchange(sock, post(token, version=b"1.0"))
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
