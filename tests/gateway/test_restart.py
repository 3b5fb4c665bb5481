"""The gateway process killed and started again: spend is never lost (a call's row is
committed before the agent has its answer), so the new gateway refuses at the right budget."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import gateway_pid

from hal9999.gateway.channel import GatewayPaths, Grant, new_token, register, unregister
from hal9999.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
KEY = "sk-real-key-restart-0123456789"


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream() as server:
        yield server


async def call(paths: GatewayPaths, token: str) -> int:
    transport = httpx.AsyncHTTPTransport(uds=str(paths.socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}
        response = await http.post("/v1/messages", json=body, headers={"x-api-key": token})
        return response.status_code


async def test_a_killed_gateway_loses_no_spend(
    sock_dir: Path, upstream: StormUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAL_GATEWAY_IDLE_S", "2")
    paths = GatewayPaths(sock_dir / "home")  # llm.sock is called by its path below
    # Each call costs 23 tokens: two fit under 50, the third still starts (46 < 50), the
    # fourth is refused.
    grant = Grant(task_id="t-budget", token=new_token(), upstream=upstream.url, key=KEY,
                  max_tokens=50)  # fmt: skip
    await register(paths, grant)
    assert [await call(paths, grant.token) for _ in range(2)] == [200, 200]
    first = await gateway_pid(paths)
    os.kill(first, signal.SIGKILL)  # at once: no drain, no clean exit

    await register(paths, grant)  # a new gateway process, reading the spend from the store
    assert await gateway_pid(paths) != first
    assert await call(paths, grant.token) == 200
    assert await call(paths, grant.token) == 400, "the budget counts the killed gateway's calls"
    assert len(upstream.seen) == 3
    await unregister(paths, grant.token)
    store = Store.open(paths.home)
    try:
        assert store.gateway_spent(task_id="t-budget")[0] == 3 * 23
    finally:
        store.close()


async def test_a_call_streaming_when_the_gateway_dies_is_recorded_interrupted(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway killed while a call streams has its row open: the next gateway records the
    call as interrupted, so the task's calls (and ``hal task requests``) count it."""
    monkeypatch.setenv("HAL_GATEWAY_IDLE_S", "2")
    paths = GatewayPaths(sock_dir / "home")
    with StormUpstream(texts=200, delay_s=0.2) as upstream:
        # A budget: the gateway reads the call's model.
        grant = Grant(
            task_id="t-cut", token=new_token(), upstream=upstream.url, key=KEY, max_tokens=10_000
        )
        await register(paths, grant)
        first = await gateway_pid(paths)
        transport = httpx.AsyncHTTPTransport(uds=str(paths.socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=30) as http:  # fmt: skip
            body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True,
                    "messages": []}  # fmt: skip
            request = http.build_request("POST", "/v1/messages", json=body,
                                         headers={"x-api-key": grant.token})  # fmt: skip
            response = await http.send(request, stream=True)
            assert response.status_code == 200
            chunks = response.aiter_bytes()
            assert b"message_start" in await anext(chunks)  # the call streams
            os.kill(first, signal.SIGKILL)
            with pytest.raises(httpx.HTTPError):  # cut short, never a whole answer
                async for _ in chunks:
                    pass
        await register(paths, grant)  # the next gateway
        assert await gateway_pid(paths) != first
        await unregister(paths, grant.token)
    store = Store.open(paths.home)
    try:
        [row] = store.gateway_requests("t-cut")
    finally:
        store.close()
    assert (row.error, row.model, row.path) == ("interrupted", "claude-sonnet-4-5", "/v1/messages")
