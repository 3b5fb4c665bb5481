"""The gateway in process: tokens, the key swap, usage records, refusals, the shared backoff."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import KEY, call, client, grant_for

from hal9999.gateway.proxy import Gateway


async def test_token_is_swapped_for_the_key_and_usage_recorded(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream)
    gw.register(grant)
    async with client(sock) as http:
        whole = await call(http, grant.token)
        streamed = await call(http, grant.token, stream=True)
    assert whole.status_code == 200 and whole.json()["content"][0]["text"] == "ok"
    assert streamed.status_code == 200 and "message_delta" in streamed.text
    assert [s.headers["x-api-key"] for s in upstream.seen] == [KEY, KEY]
    await gw.drain()
    rows = gw.store.gateway_requests("t1")
    assert [(r.status, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens)
            for r in rows] == [(200, "claude-sonnet-4-5", 11, 7, 5)] * 2  # fmt: skip
    # Anthropic bills cache reads apart: 11 + 7 + 5 tokens, at the shipped Sonnet price.
    assert rows[0].total_tokens == 23
    assert rows[0].cost_usd == pytest.approx((11 * 3 + 7 * 15 + 5 * 0.3) / 1e6)
    assert KEY not in Path(gw.store.path).read_bytes().decode("latin-1")


async def test_no_upstream_cookie_crosses_from_one_task_to_another(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # A cookie the upstream set in one task's answer (a session, a load-balancer pin) must not
    # ride along on the next task's calls: the gateway keeps no cookie jar.
    gw, sock = gateway
    upstream.set_cookie = "session=of-task-one; Path=/"
    first, second = grant_for(upstream, "t1"), grant_for(upstream, "t2")
    gw.register(first)
    gw.register(second)
    async with client(sock) as http:
        assert (await call(http, first.token)).status_code == 200
    async with client(sock) as http:
        assert (await call(http, second.token)).status_code == 200
    assert [s.headers.get("cookie") for s in upstream.seen] == [None, None]


async def test_other_tokens_are_refused_and_never_forwarded(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    gw.register(grant_for(upstream))
    async with client(sock) as http:
        for token in ("hal-gw-forged", KEY, ""):
            answer = await call(http, token)
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "unknown_token"
        bearer = await http.post("/v1/messages", json={}, headers={"authorization": "Bearer x"})
        assert bearer.status_code == 401
    assert upstream.seen == []


async def test_withdrawn_token_stops_working(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream)
    gw.register(grant)
    gw.unregister(grant.token)
    async with client(sock) as http:
        assert (await call(http, grant.token)).status_code == 401


async def test_model_outside_the_allow_list_is_refused(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=["claude-haiku-4-5"])
    gw.register(grant)
    async with client(sock) as http:
        refused = await call(http, grant.token, model="claude-opus-4-1")
        allowed = await call(http, grant.token, model="claude-haiku-4-5")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert "claude-opus-4-1" in refused.json()["error"]["message"]
    assert allowed.status_code == 200
    assert [s.body["model"] for s in upstream.seen] == ["claude-haiku-4-5"]


async def test_task_budget_refuses_with_a_final_400(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, max_tokens=40)
    gw.register(grant)
    async with client(sock) as http:
        statuses = [(await call(http, grant.token)).status_code for _ in range(3)]
        last = await call(http, grant.token)
    # 23 tokens a call: the first two are under 40 when they start, the third is refused.
    assert statuses == [200, 200, 400]
    assert last.json()["error"]["code"] == "budget_exceeded"
    assert len(upstream.seen) == 2
    await gw.drain()
    assert gw.store.gateway_refused("t1", "budget_exceeded")


async def test_daily_budget_spans_tasks(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    first = grant_for(upstream, "t1", settings={"daily_max_tokens": 30})
    second = grant_for(upstream, "t2", settings={"daily_max_tokens": 30})
    gw.register(first)
    gw.register(second)
    async with client(sock) as http:
        assert (await call(http, first.token)).status_code == 200
        assert (await call(http, second.token)).status_code == 200
        assert (await call(http, second.token)).status_code == 400


async def test_storm_is_absorbed_by_one_shared_backoff(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    upstream.fail_first, upstream.retry_after, upstream.delay_s = 6, "0.3", 0.05
    grants = [grant_for(upstream, f"t{n}", settings={"concurrency": 3}) for n in range(8)]
    for grant in grants:
        gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(
            *(call(http, g.token, stream=True) for g in grants for _ in range(2))
        )
    assert [a.status_code for a in answers] == [200] * 16
    assert upstream.refused == 6 and len(upstream.seen) == 16
    assert upstream.peak <= 3, "the upstream saw more than the configured concurrency"


async def test_unregister_aborts_calls_in_flight(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    upstream.delay_s = 5.0
    grant = grant_for(upstream)
    gw.register(grant)
    async with client(sock) as http:
        pending = asyncio.ensure_future(call(http, grant.token, stream=True))
        for _ in range(100):
            if gw.inflight.get(grant.token):
                break
            await asyncio.sleep(0.02)
        started = asyncio.get_running_loop().time()
        gw.unregister(grant.token)
        with pytest.raises(httpx.HTTPError):
            await pending
        assert asyncio.get_running_loop().time() - started < 2.0
    await gw.drain()
    [row] = gw.store.gateway_requests("t1")
    assert row.error == "aborted"


async def raw_call(sock: str, target: str, token: str) -> bytes:
    """One request with a request target no HTTP client would send; the whole answer."""
    body = b'{"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}'
    reader, writer = await asyncio.open_unix_connection(sock)
    head = (f"POST {target} HTTP/1.1\r\nhost: gw\r\nx-api-key: {token}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")  # fmt: skip
    writer.write(head.encode() + body)
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_request_target_cannot_aim_the_key_at_another_host(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # The target is joined to the upstream's origin: one that does not start with "/" once
    # made "http://127.0.0.1:P" + "@127.0.0.1:Q/v1/messages", a URL whose host is the
    # agent's choice, and the real key went there.
    gw, sock = gateway
    grant = grant_for(upstream)
    gw.register(grant)
    with StormUpstream() as elsewhere:
        port = elsewhere.url.rpartition(":")[2]
        for target in (f"@127.0.0.1:{port}/v1/messages", f":{port}/v1/messages",
                       f".localhost:{port}/v1/messages"):  # fmt: skip
            answer = await raw_call(sock, target, grant.token)
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        # An absolute-form target (a proxy's request) or "//host/path": the host is ignored,
        # only the path is joined to the task's upstream.
        authority = elsewhere.url.partition("://")[2]
        for target in (f"http://{authority}/v1/messages", f"//{authority}/v1/messages"):
            answer = await raw_call(sock, target, grant.token)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert elsewhere.seen == []
    assert [s.path for s in upstream.seen] == ["/v1/messages"] * 2
    assert all(s.headers.get("x-api-key") == grant.key for s in upstream.seen)


async def test_parallel_calls_queued_for_the_upstream_cannot_spend_past_the_budget(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # The budget was read when a call arrived, not when it left: calls fired at once all
    # passed (nothing spent yet), queued for the upstream's one slot, and every one went out.
    gw, sock = gateway
    upstream.delay_s = 0.2
    grant = grant_for(upstream, max_tokens=40, settings={"concurrency": 1})
    gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(*(call(http, grant.token) for _ in range(6)))
    # 23 tokens a call: the second leaves with 23 spent, the third would start past 40.
    assert sorted(a.status_code for a in answers) == [200, 200, 400, 400, 400, 400]
    assert len(upstream.seen) == 2


async def test_a_cost_budget_refuses_a_model_with_no_price(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # A model no price source knows costs null, which no cost budget ever counted: an
    # agent under --max-cost could call any unpriced model (a private one) forever.
    gw, sock = gateway
    grant = grant_for(upstream, max_cost_usd=0.0001)
    daily = grant_for(upstream, "t2", settings={"daily_max_cost_usd": 0.0001})
    gw.register(grant)
    gw.register(daily)
    async with client(sock) as http:
        for token in (grant.token, daily.token):
            refused = [await call(http, token, model="claude-private-9") for _ in range(3)]
            assert [a.status_code for a in refused] == [403] * 3
            assert "'claude-private-9' has no price" in refused[0].json()["error"]["message"]
        priced = await call(http, grant.token)
    assert priced.status_code == 200
    assert [s.body["model"] for s in upstream.seen] == ["claude-sonnet-4-5"]


@pytest.mark.parametrize("prefix", [b" \r\n\t", b"\xef\xbb\xbf"], ids=["whitespace", "bom"])
async def test_the_allow_list_reads_the_model_of_any_json_the_upstream_reads(
    gateway: tuple[Gateway, str], upstream: StormUpstream, prefix: bytes
) -> None:
    # The model was read only from a body starting with "{": one starting with whitespace
    # (or a BOM), which the upstream parses the same, had no model, and passed the list.
    gw, sock = gateway
    grant = grant_for(upstream, models=["claude-haiku-4-5"])
    gw.register(grant)
    body = prefix + b'{"model": "claude-opus-4-1", "max_tokens": 10, "messages": []}'
    async with client(sock) as http:
        answer = await http.post("/v1/messages", content=body,
                                 headers={"x-api-key": grant.token})  # fmt: skip
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "model_not_allowed"
    assert upstream.seen == []


async def test_a_body_nested_past_the_parser_is_refused_under_an_allow_list(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # Python's parser gives up on deep nesting where an upstream's may not: unread, the body
    # had no model and passed the allow-list (and the connection died on the exception).
    gw, sock = gateway
    grant = grant_for(upstream, models=["claude-haiku-4-5"])
    gw.register(grant)
    body = b'{"model": "claude-opus-4-1", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    async with client(sock) as http:
        answer = await http.post("/v1/messages", content=body,
                                 headers={"x-api-key": grant.token})  # fmt: skip
    assert answer.status_code == 400
    assert "nested too deep" in answer.json()["error"]["message"]
    assert upstream.seen == []


async def test_a_body_is_not_read_without_a_token_nor_past_the_tasks_share(
    gateway: tuple[Gateway, str], upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every body was read whole (up to 64 MiB) before its token was looked at, on as many
    # connections as an agent opened: memory every task's calls share, for the taking.
    gw, sock = gateway
    head = "POST /v1/messages HTTP/1.1\r\nhost: gw\r\n{}content-length: {}\r\n\r\n"
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(head.format("", 64 << 20).encode() + b"{")  # the body never comes
    async with asyncio.timeout(10):
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 401 ")
    writer.close()

    monkeypatch.setattr("hal9999.gateway.held.MAX_HELD_BODIES", 1 << 20)
    upstream.delay_s = 1.0
    grant = grant_for(upstream)
    gw.register(grant)
    body = b'{"model": "claude-sonnet-4-5", "messages": [], "pad": "' + b"x" * 600_000 + b'"}'
    async with client(sock) as http:
        first = asyncio.ensure_future(
            http.post("/v1/messages", content=body, headers={"x-api-key": grant.token})
        )
        for _ in range(100):
            if gw.inflight.get(grant.token):
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_unix_connection(sock)
        token = f"x-api-key: {grant.token}\r\n"
        writer.write(head.format(token, len(body)).encode())  # no byte of the body yet
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 429 ")
        writer.close()
        assert (await first).status_code == 200
        # Answered, its body no longer counts.
        assert gw.held == {}
        again = await http.post("/v1/messages", content=body, headers={"x-api-key": grant.token})
        assert again.status_code == 200


async def test_the_bodies_of_all_tasks_together_are_bounded_and_counted_as_they_arrive(
    gateway: tuple[Gateway, str], upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each task had its share (256 MiB) and nothing bounded them together: sixteen tasks'
    # agents held 4 GiB; and a head declaring 64 MiB took all of it before a byte came.
    from hal9999.gateway.wire import BODY_PIECE

    gw, sock = gateway
    monkeypatch.setattr("hal9999.gateway.held.MAX_HELD_IN_ALL", 4 * BODY_PIECE)
    head = "POST /v1/messages HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\n{}\r\n"
    framings = [f"content-length: {64 << 20}\r\n", "transfer-encoding: chunked\r\n"]
    conns = []
    for i, framing in enumerate(framings):  # a chunk declared as large counts the same
        grant = grant_for(upstream, task_id=f"h{i}")
        gw.register(grant)
        reader, writer = await asyncio.open_unix_connection(sock)
        chunk = b"" if "length" in framing else b"%x\r\n" % (64 << 20)
        writer.write(head.format(grant.token, framing).encode() + chunk + b"x" * (BODY_PIECE + 1))
        conns.append((reader, writer))
    async with asyncio.timeout(10):  # a piece read, the next held: 2 MiB each, not 64
        while sorted(gw.held.values()) != [2 * BODY_PIECE] * 2:
            await asyncio.sleep(0.02)
    grant = grant_for(upstream)
    gw.register(grant)
    async with client(sock) as http:
        refused = await call(http, grant.token)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_bodies"
        for _, writer in conns:
            writer.close()
        async with asyncio.timeout(10):
            while gw.held:
                await asyncio.sleep(0.02)
        assert (await call(http, grant.token)).status_code == 200


async def test_a_refused_models_name_is_stored_short_and_listed_sanitised(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # A refused call's row kept the model name the agent sent: a megabyte per call into the
    # store (refusals spend no budget), and escape sequences for `hal task requests`.
    from tests.support.store import make_task

    gw, sock = gateway
    gw.store.insert_task(make_task("t1", status="running"))
    grant = grant_for(upstream, models=["claude-haiku-4-5"])
    gw.register(grant)
    name = "\x1b]0;owned\x07\x1b[2J\n   2  200  forged-row" + "x" * (1 << 20)
    async with client(sock) as http:
        assert (await call(http, grant.token, model=name)).status_code == 403
    await gw.drain()
    [row] = gw.store.gateway_requests("t1")
    assert row.error == "model_not_allowed" and row.model is not None
    assert len(row.model) <= 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(gw.store.path.parent), HAL_NO_DAEMON="1")
    shown = subprocess.run([sys.executable, "-m", "hal9999", "task", "requests", "t1"], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "model_not_allowed" in shown.stdout
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert len(shown.stdout.splitlines()) == 3, "a header, one row, the totals"


async def test_the_key_an_upstream_echoes_never_reaches_the_agent(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    upstream.echo_key = True
    grant = grant_for(upstream)
    gw.register(grant)
    async with client(sock) as http:
        refused = await call(http, grant.token)
        streamed = await call(http, grant.token, stream=True)
    assert [s.headers["x-api-key"] for s in upstream.seen] == [KEY, KEY]
    for answer in (refused, streamed):
        assert KEY not in answer.text and KEY not in str(answer.headers)
    assert refused.status_code == 401 and refused.headers["x-echo"] == "[REDACTED]"
    assert refused.json()["error"]["message"] == "invalid x-api-key [REDACTED]"
    # The stream split the key across two writes: masked whole, the rest intact.
    assert streamed.status_code == 200 and "data: [REDACTED]\n\n" in streamed.text
    assert "message_delta" in streamed.text
    await gw.drain()
    rows = gw.store.gateway_requests("t1")
    assert [(r.status, r.output_tokens) for r in rows] == [(401, 0), (200, 7)]


async def test_a_tasks_calls_in_flight_are_its_own_and_their_places_come_back(
    gateway: tuple[Gateway, str], upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What held of the cap on a task's calls in flight (proxy.MAX_CALLS): it is the task's
    (another task's call is not refused), and a call's place comes back when it ends, one the
    agent hung up on included."""
    from hal9999.gateway import proxy

    gw, sock = gateway
    monkeypatch.setattr(proxy, "MAX_CALLS", 1)
    upstream.gate = threading.Event()
    mine, other = grant_for(upstream, "t1"), grant_for(upstream, "t2")
    gw.register(mine)
    gw.register(other)

    async def in_flight(token: str, count: int) -> None:
        while len(gw.inflight.get(token, ())) != count:
            await asyncio.sleep(0.01)

    async with client(sock) as http, asyncio.timeout(30):
        held = asyncio.create_task(call(http, mine.token))
        await in_flight(mine.token, 1)
        refused = await call(http, mine.token)
        assert refused.status_code == 429 and "too_many_calls" in refused.text, refused.text
        theirs = asyncio.create_task(call(http, other.token))
        await in_flight(other.token, 1)  # admitted: the other task's place is its own
        upstream.gate.set()
        assert (await held).status_code == 200 and (await theirs).status_code == 200
        assert (await call(http, mine.token)).status_code == 200  # its place came back
        upstream.gate.clear()
        hung = asyncio.create_task(call(http, mine.token))
        await in_flight(mine.token, 1)
        hung.cancel()  # the agent hangs up while the upstream is still answering
        await asyncio.gather(hung, return_exceptions=True)
        upstream.gate.set()
        await in_flight(mine.token, 0)
        assert (await call(http, mine.token)).status_code == 200
