"""The gateway in process, against an agent that will not stop: a refusal looped on, spend the
store cannot keep, more calls in flight than a task's share."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import httpx
import pytest
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import KEY, call, client, grant_for

from hal9999.gateway import ledger, proxy, refusal
from hal9999.gateway.proxy import Gateway
from hal9999.store import Store


async def test_an_agent_looping_on_a_refusal_is_throttled_and_stored_a_bounded_number_of_times(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=["claude-haiku-4-5"])
    gw.register(grant)
    async with client(sock) as http:
        answers = [await call(http, grant.token, model="claude-opus-4-1") for _ in range(40)]
    limit = refusal.REFUSALS_PER_MINUTE
    assert [a.status_code for a in answers] == [403] * limit + [429] * (40 - limit)
    throttled = answers[-1]
    assert throttled.json()["error"]["code"] == "too_many_refusals"
    assert "model_not_allowed" in throttled.json()["error"]["message"]
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    await gw.drain()
    rows = gw.store.gateway_requests("t1")
    # Each refusal up to the limit, then one row saying the task was throttled.
    assert [(r.status, r.error) for r in rows] == (
        [(403, "model_not_allowed")] * limit + [(429, "too_many_refusals")]
    )
    assert upstream.seen == []
    # A minute later the task's refusals are stored again.
    gw.refusals._minutes["t1"] = (0.0, 40)
    async with client(sock) as http:
        assert (await call(http, grant.token, model="claude-opus-4-1")).status_code == 403
    await gw.drain()
    assert len(gw.store.gateway_requests("t1")) == limit + 2


async def test_a_task_whose_spend_the_store_refuses_gets_no_more_calls(
    gateway: tuple[Gateway, str],
    upstream: StormUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The disk fails under t1's rows (on the loop's own connection and in the thread): its
    # spend would live only in memory, gone at a restart, and its budget with it.
    def failing(real: Any) -> Any:
        def add(self: Any, rows: Any) -> Any:
            if any(r.task_id == "t1" for r in (rows if isinstance(rows, list) else [rows])):
                raise sqlite3.OperationalError("disk I/O error")
            return real(self, rows)

        return add

    for cls, name in [
        (Store, "add_gateway_requests"),
        (Store, "add_gateway_request"),
        (ledger._Writer, "add_gateway_requests"),
        (ledger._Writer, "add_one"),
    ]:
        monkeypatch.setattr(cls, name, failing(getattr(cls, name)))  # fmt: skip
    gw, sock = gateway
    first, second = grant_for(upstream, "t1", max_tokens=1000), grant_for(upstream, "t2")
    gw.register(first)
    gw.register(second)
    async with client(sock) as http:
        with pytest.raises(httpx.HTTPError):  # the answer is withheld: cut before its end
            await call(http, first.token)
    async with client(sock) as http:
        refused = await call(http, first.token)
        assert (await call(http, second.token)).status_code == 200
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "gateway_error"
    assert "could not be recorded (disk I/O error)" in refused.json()["error"]["message"]
    assert [s.headers["x-api-key"] for s in upstream.seen] == [KEY, KEY]  # t1 once, t2 once
    assert "could not record a call of task t1; its further calls are refused" in caplog.text
    await gw.drain()
    assert [r.status for r in gw.store.gateway_requests("t2")] == [200]


async def test_calls_past_a_tasks_cap_are_refused_recorded_and_abandoned_ones_give_room_back(
    gateway: tuple[Gateway, str], upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent that sends calls and hangs up (a client reset mid-call, a stream cut) must not
    # keep its places: past them every later call of the task was 429 too_many_calls.
    gw, sock = gateway
    monkeypatch.setattr(proxy, "MAX_CALLS", 2)
    upstream.gate = threading.Event()
    grant = grant_for(upstream)
    gw.register(grant)
    body = b'{"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true, "messages": []}'
    head = b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
    head += b"x-api-key: %s\r\ncontent-length: %d\r\n\r\n" % (grant.token.encode(), len(body))
    held = []
    for _ in range(2):
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(head + body)
        held.append((reader, writer))
    for _ in range(200):
        if len(gw.inflight.get(grant.token, ())) == 2:
            break
        await asyncio.sleep(0.01)
    async with client(sock) as http:
        refused = await call(http, grant.token)
        assert refused.status_code == 429 and "too_many_calls" in refused.text, refused.text
        for _, writer in held:  # hung up while the upstream holds the calls
            writer.transport.abort()
        upstream.gate.set()
        for _ in range(300):
            if not gw.inflight.get(grant.token):
                break
            await asyncio.sleep(0.01)
        assert not gw.inflight.get(grant.token), gw.inflight
        answer = await call(http, grant.token)
        assert answer.status_code == 200, answer.text
    await gw.drain()
    rows = gw.store.gateway_requests("t1")
    assert [r.error for r in rows].count("too_many_calls") == 1, rows


async def test_an_answer_the_agent_hangs_up_on_is_metered_to_its_end(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # A stream's usage comes at its end (Anthropic's message_delta, OpenAI's last chunk), after
    # the text an agent wants: one that hung up once it had the text left the call recorded
    # with what it had read (here 1 output token of 7; OpenAI's, 0 of everything), so every
    # budget and the hive's counted a fraction of what the upstream billed. The gateway now
    # reads the answer to its end after the agent left.
    gw, sock = gateway
    upstream.delay_s, upstream.texts = 0.3, 2
    grant = grant_for(upstream)
    gw.register(grant)
    body = b'{"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true, "messages": []}'
    head = b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
    head += b"x-api-key: %s\r\ncontent-length: %d\r\n\r\n" % (grant.token.encode(), len(body))
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(head + body)
    seen = b""
    while b"message_start" not in seen:
        seen += await asyncio.wait_for(reader.read(4096), 30)
    writer.transport.abort()  # it has the text; the usage would come next
    for _ in range(500):
        if gw.store.gateway_requests("t1") and not gw.inflight.get(grant.token):
            break
        await asyncio.sleep(0.01)
    await gw.drain()
    [row] = gw.store.gateway_requests("t1")
    assert (row.input_tokens, row.output_tokens) == (11, 7), row
