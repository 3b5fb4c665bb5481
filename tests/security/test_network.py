"""``network = "host"`` gives outbound access, not the host's loopback: a hostile command in a
host-mode sandbox reaches neither a listener on the host's 127.0.0.1 (another task's server,
the daemon's port) nor an abstract unix socket, through any address."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.server.selfsigned import server_tls
from tests.support.gateway import host_address
from tests.support.server import AUTH, TOKEN, http_server, router

from hal9999.errors import CapabilityError
from hal9999.providers.bwrap import usernet
from hal9999.providers.bwrap.provider import BwrapConfig, BwrapProvider, BwrapSandbox
from hal9999.providers.host import user as sandboxuser
from hal9999.server.listen import MAX_PER_PEER
from hal9999.spec import SandboxSpec, ShellCommand

pytestmark = pytest.mark.bwrap

PROBE = r"""
import socket, sys
port, abstract = int(sys.argv[1]), sys.argv[2]
for host in ("127.0.0.1", sys.argv[3], "::1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family)
    s.settimeout(2)
    try:
        s.connect((host, port))
        print(host, "REACHED", s.recv(64).decode())
    except OSError as e:
        print(host, "refused", type(e).__name__)
u = socket.socket(socket.AF_UNIX)
try:
    u.connect("\0" + abstract)
    print("abstract REACHED", u.recv(64).decode())
except OSError as e:
    print("abstract refused", type(e).__name__)
"""


@contextlib.asynccontextmanager
async def host_listeners(secret: str) -> AsyncIterator[tuple[int, str]]:
    """A TCP listener on the host's loopback and an abstract unix socket, both answering
    ``secret``, the way another task's server would."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(secret.encode())
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(answer, "127.0.0.1", 0)
    abstract = f"hal-test-{secrets.token_hex(6)}"
    unix_sock = socket.socket(socket.AF_UNIX)
    unix_sock.bind("\0" + abstract)
    unix = await asyncio.start_unix_server(answer, sock=unix_sock)
    try:
        yield tcp.sockets[0].getsockname()[1], abstract
    finally:
        for server in (tcp, unix):
            server.close()
            await server.wait_closed()


def _usernet_works() -> bool:
    userns = not sandboxuser.privileged()
    return usernet.program() is not None and (
        not userns or os.access("/dev/net/tun", os.R_OK | os.W_OK)
    )


async def test_host_mode_reaches_no_host_loopback_service(hal_home: Path) -> None:
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    if not _usernet_works():
        # It fails closed, naming the fix, rather than share the host's network.
        with pytest.raises(CapabilityError, match=r"slirp4netns|/dev/net/tun"):
            await provider.create(SandboxSpec(network="host"))
        return
    sandbox = await provider.create(SandboxSpec(network="host"))
    assert isinstance(sandbox, BwrapSandbox)
    secret = f"TASK-A-SECRET-{secrets.token_hex(4)}"
    try:
        await sandbox.write_file_atomic("/workspace/probe.py", PROBE.encode())
        async with host_listeners(secret) as (port, abstract):
            result = await sandbox.exec(
                ShellCommand(script=f"python3 probe.py {port} {abstract} {usernet.GATEWAY}"),
                timeout=60,
            )
        out = result.stdout.decode()
        assert result.ok, result.stderr
        assert secret not in out and "REACHED" not in out, out
        assert out.count("refused") == 4, out
        # Outbound is wired: its own interface, a default route, and slirp's resolver.
        setup = await sandbox.exec(
            ShellCommand(script="ip -br link; ip route; cat /etc/resolv.conf"), timeout=30
        )
        text = setup.stdout.decode()
        assert "tap0" in text and f"default via {usernet.GATEWAY}" in text, text
        assert f"nameserver {usernet.DNS}" in text
        # The agent is who it is without the network: its own uid as root's hal, else the
        # user's (an ordinary user's host mode nests bwrap where root is mapped: not root).
        who = await sandbox.exec(ShellCommand(script="id -u; id -g"), timeout=30)
        expected = sandbox.uid if sandbox.uid is not None else os.getuid()
        assert who.stdout.decode().split()[0] == str(expected), who.stdout
        assert "0" not in who.stdout.decode().split(), who.stdout
    finally:
        await provider.destroy(sandbox.id)


async def test_shared_host_network_is_an_explicit_choice(hal_home: Path) -> None:
    # The old behaviour stays available, but only when asked for in the provider's settings.
    assert BwrapConfig().host_network == "usernet"
    shared = BwrapProvider(
        state_dir=hal_home / "sandboxes" / "bwrap", config=BwrapConfig(host_network="shared")
    )
    sandbox = await shared.create(SandboxSpec(network="host"))
    try:
        async with host_listeners("shared") as (port, abstract):
            await sandbox.write_file_atomic("/workspace/probe.py", PROBE.encode())
            result = await sandbox.exec(
                ShellCommand(script=f"python3 probe.py {port} {abstract} {usernet.GATEWAY}"),
                timeout=60,
            )
        assert "127.0.0.1 REACHED shared" in result.stdout.decode()
    finally:
        await shared.destroy(sandbox.id)


FLOOD = r"""
import socket, ssl, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = [socket.create_connection((host, port), 10) for _ in range(count)]  # no handshake
tls = ssl.create_default_context()
tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
for _ in range(count):  # a handshake, then silence
    try:
        held.append(tls.wrap_socket(socket.create_connection((host, port), 10)))
    except OSError:
        pass
open("/workspace/flooding", "w").close()
time.sleep(120)
"""


def _sockets() -> int:
    """Sockets this process holds open."""
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
               for fd in os.listdir("/proc/self/fd") if fd.isdigit()
               and os.path.exists(f"/proc/self/fd/{fd}"))  # fmt: skip


async def test_a_host_mode_agent_cannot_hold_the_daemons_tls_listener(
    hal_home: Path, tmp_path: Path
) -> None:
    # `hal serve --listen` on an address that is not loopback is reachable from a sandbox
    # with network "host" (slirp connects from the host's own address). Its connections that
    # never began a TLS handshake were counted nowhere (asyncio handshakes before the
    # protocol sees one), each a descriptor of the daemon until the deadline; those that
    # completed one and sent nothing took every one of the listener's places, and the
    # operator's dashboard answered 503.
    address = host_address()
    if not _usernet_works() or address is None:
        pytest.skip("slirp4netns and an address of the host other than loopback")
    tls = server_tls(tmp_path)
    server = http_server(router(), TOKEN, head_timeout_s=120)  # the agent's, not the clock's
    port = await server.listen_tcp("0.0.0.0", 0, tls=tls)
    provider = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    sandbox = await provider.create(SandboxSpec(network="host"))
    flood: asyncio.Task[object] | None = None
    try:
        await sandbox.write_file_atomic("/workspace/flood.py", FLOOD.encode())
        before = _sockets()
        script = f"python3 flood.py {address} {port} 40"
        flood = asyncio.create_task(sandbox.exec(ShellCommand(script=script), timeout=180))
        async with asyncio.timeout(120):
            while not await sandbox.exists("/workspace/flooding"):
                assert not flood.done(), flood.result()
                await asyncio.sleep(0.1)
        # What the daemon holds for the agent: its places for one address, no more.
        assert _sockets() - before <= MAX_PER_PEER
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.write(
            b"POST /v1/echo HTTP/1.1\r\nHost: hal\r\n%sContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}" % AUTH
        )
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        if flood is not None:
            flood.cancel()
            await asyncio.gather(flood, return_exceptions=True)
        await provider.destroy(sandbox.id)
        await server.close()
