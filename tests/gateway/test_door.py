"""The gateway's door (gateway/door.py): how long a connection may take to send a request,
and how many of one sandbox may wait at once."""

from __future__ import annotations

import asyncio

import pytest
from tests.gateway import test_proxy
from tests.gateway.test_proxy import call, client, grant_for
from tests.gateway.upstream import StormUpstream

from hal9999.gateway.proxy import Gateway

gateway = test_proxy.gateway  # the fixtures these tests take
upstream = test_proxy.upstream


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
