"""The egress proxy never tunnels to the host's own addresses, as the kernel routes them: an
allowed name (a wildcard over a DNS service that maps names to addresses, a rebinding name)
that resolves to the host's ``eth0`` address reached a host service listening on every
address. A host in a namespace the test creates (a ULA /64 over a veth) is reached."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from tests.support.gateway import connect, host_address
from tests.ula_host import UlaHost

from hal9999.allowlist import allowed, intersect
from hal9999.events.models import EgressDenied, Event
from hal9999.gateway.channel import Grant, new_token
from hal9999.gateway.local import is_local
from hal9999.gateway.proxy import Gateway
from hal9999.gateway.tasks import GatewayUsage
from hal9999.values import _egress_host


def own_addresses() -> list[str]:
    four, six = host_address(), host_address(socket.AF_INET6)
    found = [] if four is None else [four, f"::ffff:{four}"]
    return found + ([] if six is None else [six])


@pytest.mark.parametrize("kind", ["ipv4", "ipv4-mapped", "ipv6"])
async def test_an_allowed_name_on_the_hosts_own_address_is_refused_and_recorded(
    egress: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    four, six = host_address(), host_address(socket.AF_INET6)
    address = {"ipv4": four, "ipv6": six, "ipv4-mapped": four and f"::ffff:{four}"}[kind]
    if address is None:
        pytest.skip(f"this host has no {kind} address other than loopback and link-local")
    gateway, sock = egress
    version = 4 if kind == "ipv4" else 6
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    # A host service on every address: what an agent reached through an allowed name.
    bound = "::" if version == 6 else "0.0.0.0"
    server = await asyncio.start_server(lambda r, w: w.close(), bound, 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    async def resolved(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolved)
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=[f"*.nip.example:{port}"])  # fmt: skip
    gateway.register(grant)
    target = f"own.nip.example:{port}"
    async with server:
        status, reader, writer = await connect(sock, target, grant.token)
        body = await reader.read()
        writer.close()
    assert status.startswith(b"HTTP/1.1 403"), status
    assert body == f"hal egress: {target} is refused (an address of this host)".encode()
    await gateway.drain()
    rows = gateway.store.gateway_requests("t1")
    assert [(r.path, r.status, r.error) for r in rows] == [(target, 403, "egress_denied")]
    events: list[Event] = []
    GatewayUsage(gateway.store, "t1", after=0).pump(events.append, final=True)
    assert events == [EgressDenied(host="own.nip.example", port=port, method="CONNECT")]


async def test_a_host_in_a_namespace_of_the_test_is_reached(
    egress: tuple[Gateway, str], ula: UlaHost
) -> None:
    gateway, sock = egress

    server, target = await ula.echo_server()
    spelled = target.replace("::2]", ":0:0:0:0002]")  # any spelling of the allowed address
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=[target])  # fmt: skip
    gateway.register(grant)
    async with server:
        status, reader, writer = await connect(sock, spelled, grant.token)
        assert status.startswith(b"HTTP/1.1 200"), status
        writer.write(b"through\n")
        assert await reader.readline() == b"echo:through\n"
        writer.close()
    await gateway.drain()
    assert gateway.store.gateway_requests("t1") == []


def test_the_kernel_judges_local_addresses(ula: UlaHost) -> None:
    for address in [*own_addresses(), "127.0.0.1", "::1", ula.address[:-1] + "1"]:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        assert is_local(ip), address
    # The namespace's end of the veth, a documentation address: not this host.
    for address in [ula.address, "192.0.2.77", "2001:db8::77"]:
        assert not is_local(ipaddress.ip_address(address)), address


def test_an_ipv6_address_is_allowed_in_brackets_in_any_spelling() -> None:
    # "fd42::2:8443" split at its first colon: no IPv6 literal could be allowed at all.
    rules = ["[fd42::2]:8443", "[2001:DB8::1]"]
    assert allowed("fd42:0:0::0002", 8443, rules) and not allowed("fd42::2", 443, rules)
    assert allowed("2001:db8::1", 443, rules) and not allowed("2001:db8::1", 80, rules)
    assert intersect(["[fd42::2]:8443", "pypi.org"], ["[FD42:0::2]:8443"]) == ["[fd42::2]:8443"]
    for entry in ("[fd42::2]:8443", "[2001:db8::1]", "pypi.org:8443"):
        assert _egress_host(entry) == entry
    for entry in ("[192.0.2.1]:443", "[fe80::1%eth0]:443", "fd42::2", "[fd42::2]x", "[]:1"):
        with pytest.raises(ValueError, match=r"\[IPV6\]:PORT"):
            _egress_host(entry)
