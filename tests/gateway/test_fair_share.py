"""One task cannot stall another task's model calls: each task has a fair share of its
upstream's slots, and a streamed answer its agent does not read holds no slot.

Against the scripted LLM server made slow (each answer starts ``LATENCY_S`` after its call):
task A floods the gateway (far more calls than the upstream's slots, or streams it never
reads) and task B's single call must end within about two upstream latencies (waiting for
one of A's calls to end, then its own), not behind A's queue."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from tests.llm_server.script import Script, Turn
from tests.llm_server.server import ScriptedLLMServer
from tests.support.gateway import KEY, call, client

from hal9999.gateway import relay
from hal9999.gateway.channel import Grant, new_token
from hal9999.gateway.proxy import Gateway

pytestmark = pytest.mark.timeout(120)

LATENCY_S = 2.0
"""How long the scripted upstream takes before each answer."""
SLOTS = 8
"""The upstream's concurrency (the gateway's default)."""
BOUND_S = 3.5 * LATENCY_S
"""B's call: at most one of A's calls to wait for, then its own, with room for a loaded
machine (behind A's queue it takes five latencies and more)."""
LONG_TEXT = "x" * 300_000
"""An answer far larger than the socket buffers between the gateway and an agent: a stream
of it that nobody reads blocks the gateway's writes."""


def grant_of(server: ScriptedLLMServer, task_id: str) -> Grant:
    return Grant(task_id=task_id, token=new_token(), upstream=server.base_url, key=KEY)


async def until(check: Callable[[], bool], what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def timed(make: Callable[[], Awaitable[httpx.Response]]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = await make()
    return answer, time.monotonic() - started


async def test_a_task_flooding_the_upstream_does_not_queue_ahead_of_another_tasks_call(
    gateway: tuple[Gateway, str], llm_server: ScriptedLLMServer
) -> None:
    gw, sock = gateway
    llm_server.script = Script(turns=[], latency_s=LATENCY_S, max_model_calls=1000)
    flooder, other = grant_of(llm_server, "a"), grant_of(llm_server, "b")
    gw.register(flooder)
    gw.register(other)
    flood = 6 * SLOTS
    limits = httpx.Limits(max_connections=flood + 8)
    async with client(sock) as http, httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=sock, limits=limits), base_url="http://gw",
        timeout=120,
    ) as many:  # fmt: skip
        calls = [asyncio.create_task(call(many, flooder.token)) for _ in range(flood)]
        await until(lambda: len(gw.inflight.get(flooder.token, ())) == flood, "A's calls held")
        await until(lambda: len(llm_server.requests.model_calls()) >= SLOTS, "A holds the slots")
        answer, took = await timed(lambda: call(http, other.token))
        assert answer.status_code == 200, answer.text
        assert took < BOUND_S, f"B's call took {took:.1f}s behind A's {flood} calls"
        assert [a.status_code for a in await asyncio.gather(*calls)] == [200] * flood


def _unread_stream(sock: str, token: str) -> socket.socket:
    """A streamed call sent on its own connection, whose answer nobody reads."""
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True,
                       "messages": []}).encode()  # fmt: skip
    head = (f"POST /v1/messages HTTP/1.1\r\nhost: gw\r\nx-api-key: {token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")  # fmt: skip
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(sock)
    conn.sendall(head.encode() + body)
    return conn


def _read_to_end(conn: socket.socket) -> tuple[bytes, bytes]:
    """A chunked answer's head and whole body (the connection stays open after it)."""
    conn.settimeout(60)
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n") and (piece := conn.recv(1 << 16)):
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    body = b""
    while (size := int(rest[: rest.index(b"\r\n")], 16)) > 0:
        start = rest.index(b"\r\n") + 2
        body += rest[start : start + size]
        rest = rest[start + size + 2 :]
    return head, body


async def test_streams_a_task_never_reads_do_not_hold_the_upstream_from_another_task(
    gateway: tuple[Gateway, str], llm_server: ScriptedLLMServer
) -> None:
    gw, sock = gateway
    script = Script(turns=[], final=Turn.say(LONG_TEXT), latency_s=LATENCY_S, max_model_calls=100)
    llm_server.script = script
    reader, other = grant_of(llm_server, "a"), grant_of(llm_server, "b")
    gw.register(reader)
    gw.register(other)
    unread = [_unread_stream(sock, reader.token) for _ in range(SLOTS)]
    try:
        await until(lambda: len(llm_server.requests.model_calls()) >= SLOTS, "A holds the slots")
        async with client(sock) as http:
            answer, took = await timed(lambda: call(http, other.token))
        assert answer.status_code == 200, answer.text
        assert answer.json()["content"][0]["text"] == LONG_TEXT
        assert took < BOUND_S, f"B's call took {took:.1f}s behind A's unread streams"
        # A stream read again later goes on to its end: nothing of it was lost.
        head, body = await asyncio.to_thread(_read_to_end, unread[0])
        assert head.startswith(b"HTTP/1.1 200") and b"message_stop" in body
        assert body.count(b'"text_delta"') == len(LONG_TEXT) // 16
    finally:
        for conn in unread:
            conn.close()
    await until(lambda: not gw.inflight.get(reader.token), "A's calls ended with their agent")


async def test_a_stream_whose_agent_reads_nothing_for_too_long_is_cut(
    gateway: tuple[Gateway, str], llm_server: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Giving its slot back, an unread stream still held its place among the task's calls in
    # flight, a connection of the gateway and one of the upstream, for as long as its agent
    # kept the connection open.
    monkeypatch.setattr(relay, "STALLED_S", 1.0)
    gw, sock = gateway
    llm_server.script = Script(turns=[], final=Turn.say(LONG_TEXT), max_model_calls=100)
    grant = grant_of(llm_server, "a")
    gw.register(grant)
    conn = _unread_stream(sock, grant.token)
    try:
        await until(lambda: bool(gw.inflight.get(grant.token)), "the stream began")
        await until(lambda: not gw.inflight.get(grant.token), "the unread stream was cut", 30)
    finally:
        conn.close()
    await gw.drain()
    rows = gw.store.gateway_requests("a")
    assert [(r.status, r.error) for r in rows] == [(200, "agent_stalled")], rows
    assert rows[0].output_tokens, "the cut call's usage was read to its end and recorded"
