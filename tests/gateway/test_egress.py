"""The egress proxy: CONNECT only to allowed hosts, never to the host's own loopback, with the
task's token; every refusal recorded (it becomes an ``egress_denied`` event)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
from pathlib import Path

import pytest
from tests.support.gateway import connect
from tests.ula_host import UlaHost

from hal9999.events.models import EgressDenied, Event
from hal9999.gateway import egress as egress_module
from hal9999.gateway.channel import Grant, new_token
from hal9999.gateway.egress import allowed
from hal9999.gateway.proxy import Gateway
from hal9999.gateway.refusal import REFUSALS_PER_MINUTE
from hal9999.gateway.tasks import GatewayUsage
from hal9999.store import Store
from hal9999.store.gateway import GatewayRequest


def test_allow_list_rules() -> None:
    rules = ["pypi.org", "*.pythonhosted.org", "git.example:22"]
    assert allowed("pypi.org", 443, rules) and allowed("PyPI.org.", 443, rules)
    assert not allowed("pypi.org", 80, rules), "a bare host means port 443 only"
    assert allowed("files.pythonhosted.org", 443, rules)
    assert not allowed("pythonhosted.org", 443, rules), "*. means subdomains"
    assert not allowed("evilpythonhosted.org", 443, rules)
    assert allowed("git.example", 22, rules) and not allowed("git.example", 443, rules)
    assert not allowed("pypi.org.evil.example", 443, rules)


async def test_denied_hosts_are_refused_and_recorded(egress: tuple[Gateway, str]) -> None:
    gateway, sock = egress
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=["pypi.org", "localhost:1"])  # fmt: skip
    gateway.register(grant)
    status, _, writer = await connect(sock, "evil.example:443", grant.token)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    # An allowed name that is the host's own loopback: refused too.
    status, _, writer = await connect(sock, "localhost:1", grant.token)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    status, _, writer = await connect(sock, "pypi.org:443", None)
    writer.close()
    assert status.startswith(b"HTTP/1.1 407")
    status, _, writer = await connect(sock, "pypi.org:443", "hal-gw-forged")
    writer.close()
    assert status.startswith(b"HTTP/1.1 407")
    await gateway.drain()
    rows = gateway.store.gateway_requests("t1")
    assert [(r.path, r.status, r.error) for r in rows] == [
        ("evil.example:443", 403, "egress_denied"),
        ("localhost:1", 403, "egress_denied"),
    ]


async def test_allowed_host_gets_a_raw_tunnel(egress: tuple[Gateway, str], ula: UlaHost) -> None:
    gateway, sock = egress

    server, target = await ula.echo_server()
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=[target])  # fmt: skip
    gateway.register(grant)
    async with server:
        status, reader, writer = await connect(sock, target, grant.token)
        assert status.startswith(b"HTTP/1.1 200")
        writer.write(b"bytes untouched\n")
        assert await reader.readline() == b"echo:bytes untouched\n"
        writer.close()
    await gateway.drain()
    assert gateway.store.gateway_requests("t1") == []


async def test_an_allowed_name_on_an_ipv4_mapped_loopback_is_refused(
    egress: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ::ffff:127.0.0.1 is the host's loopback over IPv6, but Python's is_loopback says no:
    # an allowed name whose AAAA record the agent's side controls reached the host's services.
    gateway, sock = egress

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"a host service\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    async def mapped(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:127.0.0.1", port, 0, 0))]

    monkeypatch.setattr(loop, "getaddrinfo", mapped)
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=[f"mapped.example:{port}"])  # fmt: skip
    gateway.register(grant)
    async with server:
        status, _, writer = await connect(sock, f"mapped.example:{port}", grant.token)
        writer.close()
    assert status.startswith(b"HTTP/1.1 403"), status


async def test_an_agent_looping_on_a_denied_host_is_throttled_and_recorded_boundedly(
    egress: tuple[Gateway, str],
) -> None:
    gateway, sock = egress
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k")
    gateway.register(grant)
    statuses = []
    for _ in range(30):
        status, _, writer = await connect(sock, "evil.example:443", grant.token)
        writer.close()
        statuses.append(status.split(b" ")[1])
    limit = REFUSALS_PER_MINUTE
    assert statuses == [b"403"] * limit + [b"429"] * (30 - limit)
    assert b"Retry-After: " in status
    await gateway.drain()
    rows = gateway.store.gateway_requests("t1")
    assert [(r.status, r.error) for r in rows] == (
        [(403, "egress_denied")] * limit + [(429, "egress_denied")]
    )


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "0.0.0.1", "0.1.2.3", "::ffff:0.0.0.1"],
    ids=["nat64-loopback", "nat64-link-local", "this-network", "this-network-2", "mapped-0/8"],
)
async def test_an_allowed_name_on_an_address_that_reaches_the_host_is_refused(
    egress: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    # NAT64's 64:ff9b::/96 carries an IPv4 address the NAT64 gateway (maybe this host)
    # connects to; 0.0.0.0/8 is "this host" to Linux. Judged like loopback, never connected.
    gateway, sock = egress
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    async def resolved(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    connected: list[object] = []

    async def no_connect(*args: object, **_: object) -> None:
        connected.append(args)
        raise ConnectionRefusedError

    monkeypatch.setattr(loop, "getaddrinfo", resolved)
    monkeypatch.setattr(asyncio, "open_connection", no_connect)
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=["sneaky.example"])  # fmt: skip
    gateway.register(grant)
    status, reader, writer = await connect(sock, "sneaky.example:443", grant.token)
    assert status.startswith(b"HTTP/1.1 403"), status
    assert b"a local address" in await reader.read()
    writer.close()
    assert connected == []


async def test_an_over_long_name_under_an_allowed_wildcard_is_refused_and_recorded(
    egress: tuple[Gateway, str],
) -> None:
    gateway, sock = egress
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=["*.example.com"])  # fmt: skip
    gateway.register(grant)
    target = "a" * 64 + ".example.com:443"
    status, reader, writer = await connect(sock, target, grant.token)
    assert status.startswith(b"HTTP/1.1 403"), status
    assert b"not a valid host name" in await reader.read()
    writer.close()
    await gateway.drain()
    rows = gateway.store.gateway_requests("t1")
    assert [(r.path, r.status, r.error) for r in rows] == [(target, 403, "egress_denied")]


@pytest.mark.parametrize(
    "target",
    ["1.2.3.4\x00.example.com:443", "a\x01b.example.com:443", "a\x7f.example.com:443",
     "a b.example.com:443", "\xfc.example.com:443", "a..example.com:443",
     "a.example.com:\xb2", "a.example.com:443\xb3", "a.example.com:70000", "a.example.com:+443",
     "a.example.com:0", "a.example.com:" + "4" * 5000, "[a.example.com]:443",
     "[fe80::1%\x00]:443", "x" * 5000 + ".example.com:443"],
    ids=["nul", "control", "del", "space", "non-ascii", "empty-label", "superscript-port",
         "superscript-in-port", "port-too-big", "signed-port", "port-0", "port-5000-digits",
         "bracketed-name", "zone-index", "very-long"],
)  # fmt: skip
async def test_a_malformed_target_under_an_allowed_wildcard_is_refused_in_one_line(
    egress: tuple[Gateway, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: str,
) -> None:
    # A NUL ends the name for the C resolver ("1.2.3.4\0.example.com" is 1.2.3.4), a
    # superscript digit passes str.isdigit() but not int(): the proxy must judge the name
    # and the port it was given, refuse the rest with one recorded line, never a traceback.
    gateway, sock = egress
    loop = asyncio.get_running_loop()
    asked: list[object] = []

    async def resolved(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolved)
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=["*.example.com", "*.example.com:70000", "*.example.com:0"])  # fmt: skip
    gateway.register(grant)
    auth = base64.b64encode(f"hal:{grant.token}".encode()).decode()
    reader, writer = await asyncio.open_unix_connection(sock)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}"
    writer.write((head + "\r\n\r\n").encode("latin-1"))
    answer = await reader.read()
    writer.close()
    await gateway.drain()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"not a valid" in answer and len(answer) < 600, answer[:200]
    assert asked == [], "nothing malformed reaches the resolver"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    rows = gateway.store.gateway_requests("t1")
    assert [(r.status, r.error) for r in rows] == [(403, "egress_denied")]
    assert rows[0].path.isprintable() and rows[0].path.isascii() and len(rows[0].path) <= 300
    events: list[Event] = []
    GatewayUsage(gateway.store, "t1", after=0).pump(events.append, final=True)
    assert len(events) == 1 and isinstance(events[0], EgressDenied)


def test_a_refusal_recorded_with_a_superscript_port_becomes_an_event(tmp_path: Path) -> None:
    # A row a gateway before this check recorded unescaped: "²" passes str.isdigit().
    store = Store.open(tmp_path / "home")
    try:
        store.add_gateway_request(GatewayRequest(
            task_id="t1", ts=0.0, method="CONNECT", path="a.example.com:\xb2", status=403,
            latency_ms=0.0, error="egress_denied"))  # fmt: skip
        events: list[Event] = []
        GatewayUsage(store, "t1", after=0).pump(events.append, final=True)
    finally:
        store.close()
    assert events == [EgressDenied(host="a.example.com", port=None, method="CONNECT")]


async def test_a_method_with_control_characters_is_recorded_escaped(
    egress: tuple[Gateway, str],
) -> None:
    gateway, sock = egress
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=["*.example.com"])  # fmt: skip
    gateway.register(grant)
    auth = base64.b64encode(f"hal:{grant.token}".encode()).decode()
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(f"CON\x00\x1b[2J a.example.com:443 HTTP/1.1\r\nProxy-Authorization: Basic "
                 f"{auth}\r\n\r\n".encode())  # fmt: skip
    assert (await reader.read()).startswith(b"HTTP/1.1 403")
    writer.close()
    await gateway.drain()
    [row] = gateway.store.gateway_requests("t1")
    assert row.method == "CON\\x00\\x1b[2J"


async def test_a_task_past_its_tunnels_is_refused_recorded_and_given_room_back(
    egress: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch, ula: UlaHost
) -> None:
    # The 429 past a task's tunnels was answered and forgotten: no row, no egress_denied
    # event, so the operator saw a tool fail on an allowed host with nothing recorded.
    gateway, sock = egress
    monkeypatch.setattr(egress_module, "MAX_TUNNELS", 2)

    far_ends: list[asyncio.StreamWriter] = []

    async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        far_ends.append(writer)
        await reader.read()  # holds the tunnel until the agent's side ends it
        writer.close()

    server = await asyncio.start_server(until_eof, sock=ula.listen())
    target = ula.target(server.sockets[0].getsockname()[1])
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=[target])  # fmt: skip
    gateway.register(grant)
    async with server:
        held = [await connect(sock, target, grant.token) for _ in range(2)]
        assert all(status.startswith(b"HTTP/1.1 200") for status, _, _ in held)
        status, reader, writer = await connect(sock, target, grant.token)
        body = await reader.read()
        writer.close()
        assert status.startswith(b"HTTP/1.1 429"), status
        assert b"2 tunnels open" in body, body
        await gateway.drain()
        rows = gateway.store.gateway_requests("t1")
        assert [(r.path, r.status, r.error) for r in rows] == [(target, 429, "egress_denied")]
        # A tunnel the agent ends gives its place back (the count is never left behind).
        held[0][2].close()
        for _ in range(200):
            status, _, writer = await connect(sock, target, grant.token)
            if status.startswith(b"HTTP/1.1 200"):
                break
            writer.close()
            await asyncio.sleep(0.01)
        assert status.startswith(b"HTTP/1.1 200"), status
        for end in (writer, held[1][2], *far_ends):
            end.close()
            with contextlib.suppress(OSError):
                await end.wait_closed()


async def test_a_withdrawn_grants_tunnels_are_closed(
    egress: tuple[Gateway, str], ula: UlaHost
) -> None:
    # A withdrawn grant (its task at rest: ended, stopped, its runner killed) aborted its model
    # calls, but its tunnels went on: one to a host that keeps a connection open kept two of
    # the gateway's descriptors and a place of the task, ended or not, until that host hung up.
    gateway, sock = egress
    upstream_got: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_got.append(await reader.readexactly(5))
        upstream_got.append(await reader.read())  # never hangs up itself
        writer.close()

    server = await asyncio.start_server(silent, sock=ula.listen())
    target = ula.target(server.sockets[0].getsockname()[1])
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=[target])  # fmt: skip
    gateway.register(grant)
    async with server:
        status, reader, writer = await connect(sock, target, grant.token)
        assert status.startswith(b"HTTP/1.1 200"), status
        writer.write(b"hello")
        async with asyncio.timeout(10):
            while not upstream_got:  # the tunnel is open and pumping
                await asyncio.sleep(0.01)
            gateway.unregister(grant.token)
            assert await reader.read() == b""  # the gateway closed the agent's side
            while len(upstream_got) < 2:
                await asyncio.sleep(0.01)
        writer.close()
    assert upstream_got == [b"hello", b""]  # and the host's
    assert gateway.tunnels == {}


async def test_a_tunnel_that_never_opened_gives_its_place_back(
    egress: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch, ula: UlaHost
) -> None:
    # What held: a CONNECT answered 502 (nothing listens) leaves no place of its task behind.
    gateway, sock = egress
    monkeypatch.setattr(egress_module, "MAX_TUNNELS", 1)
    with ula.listen() as closed:
        target = ula.target(closed.getsockname()[1])
        closed.close()  # a port nothing listens on (the namespace is the test's)
        grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                      egress=[target])  # fmt: skip
        gateway.register(grant)
        for _ in range(3):
            status, _, writer = await connect(sock, target, grant.token)
            writer.close()
            assert status.startswith(b"HTTP/1.1 502"), status
    assert gateway.tunnels == {}
