"""The egress proxy: HTTP ``CONNECT`` to hosts on the task's allow-list, nothing else.

A sandbox with ``network = "none"`` reaches it on ``127.0.0.1:<port+1>`` through the same
forwarder as the LLM gateway (``channel/egress.sock`` on the host). The agent and its tools
(git, pip, npm, curl) find it in ``HTTPS_PROXY``/``HTTP_PROXY``, whose URL carries the task's
placeholder token as the proxy password: that is how the proxy knows the task and its
allow-list. There is no TLS interception: after ``200 Connection Established`` bytes flow
through untouched. Every refusal is recorded (``CONNECT host:port``, status 403, error
``egress_denied``) and becomes an ``egress_denied`` event of the task, up to
:data:`~hal9999.gateway.refusal.REFUSALS_PER_MINUTE` a minute: past them the agent is answered
429 and the minute's first such answer alone is recorded (status 429).

A name on the allow-list that resolves to a loopback, link-local, multicast or unspecified
address, or one in 0.0.0.0/8, is refused, written as IPv4 or inside IPv6 (``::ffff:127.0.0.1``,
NAT64's ``64:ff9b::127.0.0.1``), or one the kernel routes to this host (its interfaces'
addresses, see :mod:`~hal9999.gateway.local`): an allowed name must not become a way to the
host's own services. A target that is no plain ``host:port`` (a NUL, which ends a name for the C
resolver, a control or non-ASCII character, a label over 63 characters, a port outside
1-65535) is refused before the allow-list is asked, echoed and recorded escaped.

A task holds at most :data:`MAX_TUNNELS` tunnels at once: one past them is answered 429 and
recorded like every refusal (a tunnel, once open, is not waiting at the door: without this,
one agent with a single allowed host held two of the gateway's descriptors per tunnel, as
many as it opened, until every task's model calls found none). A grant withdrawn (its task
at rest) closes its tunnels, as it aborts its model calls: one to a host that never hangs up
held its descriptors and its task's place, ended or not, for as long as that host kept it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import re
import socket
import time

from hal9999.allowlist import allowed
from hal9999.gateway import door
from hal9999.gateway.channel import Grant
from hal9999.gateway.forwarder import pump
from hal9999.gateway.local import is_local
from hal9999.gateway.proxy import Gateway
from hal9999.gateway.refusal import REFUSALS_PER_MINUTE
from hal9999.store.gateway import GatewayRequest

logger = logging.getLogger(__name__)

MAX_HEAD = 16 << 10
MAX_TUNNELS = 64
"""Tunnels one task may hold open at once (a package manager opens a few at a time)."""
CONNECT_TIMEOUT_S = 15.0
PROXY_AUTH_REQUIRED = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="hal"\r\nContent-Length: 0\r\n\r\n'
)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def parse_target(target: str) -> tuple[str, int, str]:
    """A CONNECT target's host and port, or why it is no valid ``host:port`` (else "").

    The name must be plain ASCII DNS labels (an international name in its ``xn--`` form) or an
    IP address (IPv6 in brackets) and the port ASCII digits in 1-65535: anything else (a NUL,
    which ends the name for the C resolver, a control character, a superscript digit that
    ``str.isdigit`` takes and ``int`` does not) is refused before the allow-list is asked.
    """
    host, _, port_text = target.rpartition(":")
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    port = int(port_text) if digits else 0
    if not 0 < port < 65536:
        return "", 0, "not a valid port"
    if host.startswith("[") and host.endswith("]") and "%" not in host:  # no zone index
        with contextlib.suppress(ValueError):
            if isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address):
                return host[1:-1], port, ""
        return "", 0, "not a valid IPv6 address"
    name = host.lower().removesuffix(".")
    if not host.isascii() or len(name) > 253 or not all(_LABEL.match(label) for label in
                                                         name.split(".")):  # fmt: skip
        return "", 0, "not a valid host name; an international name goes in its xn-- form"
    return host, port, ""


def printable(text: str, limit: int = 300) -> str:
    """``text`` as the agent sent it, control and non-ASCII characters escaped, cut at
    ``limit``: what a refusal echoes and records."""
    return text.encode("unicode_escape").decode("ascii")[:limit]


def _unsafe(address: str) -> str:
    """Why ``address`` is no tunnel's target ("" when it may be one)."""
    ip = ipaddress.ip_address(address)
    judged = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:127.0.0.1 is the loopback, which is_loopback misses; a NAT64 gateway turns
        # 64:ff9b::127.0.0.1 into its own 127.0.0.1: both are judged by the IPv4 address.
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
            judged = [ip]  # connected to over IPv4
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            judged.append(ip)
    if ip.version == 4 and ip in _THIS_NETWORK:  # 0.x.y.z: Linux connects to itself on them
        return "a local address"
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return "a local address"
    # The host's own addresses (eth0's, a prefix routed to the host), as the kernel routes
    # them: a host service listening on every address is no sandbox's to reach.
    return "an address of this host" if any(is_local(one) for one in judged) else ""


def _refusal(method: str, host: str, port: int, bad: str, grant: Grant) -> str | None:
    """Why a proxy request is refused, or None to let it through."""
    if method == "CONNECT" and bad:  # before the allow-list: NUL ends a name for the resolver
        return bad
    if method != "CONNECT" or not allowed(host, port, grant.egress):
        return "not on the allow-list; allow it with [gateway] egress"
    if grant.egress_only is not None and not allowed(host, port, grant.egress_only):
        # Config allows it, but this task (or its project) narrowed its list.
        return "the task's egress list drops it; add it to --egress-only"
    return None


class EgressProxy:
    """CONNECT tunnels for the tasks whose grants the gateway holds."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.tunnels: dict[str, int] = {}
        """Tunnels open (or connecting) by task."""

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One proxy connection: a CONNECT head, then a tunnel (or a refusal)."""
        # Waiting for its head, it counts against the gateway's door (see door.py): one
        # sandbox's silent connections cannot take every other task's room.
        peer = door.peer_of(writer)
        if not self.gateway.door.enter(peer):
            writer.close()
            return
        try:
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, OSError):
            writer.close()
            return
        finally:
            self.gateway.door.leave(peer)
        try:
            await self._handle(head, reader, writer)
        except (ConnectionError, OSError):
            pass
        except Exception as exc:  # an agent's request must never flood the log with tracebacks
            logger.warning("egress: a connection failed (%s: %s)", type(exc).__name__,
                           printable(str(exc), 200))  # fmt: skip
        finally:
            writer.close()

    async def _handle(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0]
        grant = self._grant(lines[1:])
        if grant is None:
            writer.write(PROXY_AUTH_REQUIRED)
            return
        started = time.monotonic()
        host, port, bad = parse_target(target)
        why = _refusal(method, host, port, bad, grant)
        if why is not None:
            await self._deny(writer, grant, method, target, started, why)
            return
        task = grant.task_id
        if self.tunnels.get(task, 0) >= MAX_TUNNELS:  # recorded: the operator sees why
            why = f"this task has {MAX_TUNNELS} tunnels open; close one"
            await self._deny(writer, grant, method, target, started, why, too_many=True)
            return
        self.tunnels[task] = self.tunnels.get(task, 0) + 1
        this = asyncio.current_task()
        assert this is not None
        open_ = self.gateway.tunnels.setdefault(grant.token, set())
        open_.add(this)  # withdrawing the grant closes it (Gateway.unregister)
        try:
            await self._tunnel(writer, reader, grant, method, target, host, port, started)
        finally:
            left = self.tunnels.pop(task, 1) - 1
            if left > 0:
                self.tunnels[task] = left
            open_.discard(this)
            if not open_ and self.gateway.tunnels.get(grant.token) is open_:
                del self.gateway.tunnels[grant.token]

    async def _tunnel(
        self,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        grant: Grant,
        method: str,
        target: str,
        host: str,
        port: int,
        started: float,
    ) -> None:
        """Connect to the allowed ``host`` (never a local address) and pump both ways."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
                addresses = [str(info[4][0]) for info in infos]
                # Every address judged (the one connected to among them), no second lookup.
                why = next(filter(None, map(_unsafe, addresses)), "" if addresses else "no address")
                if why:
                    await self._deny(writer, grant, method, target, started, why)
                    return
                up_reader, up_writer = await asyncio.open_connection(addresses[0], port)
        except UnicodeError:  # the name cannot be encoded (a label over 63 characters)
            await self._deny(writer, grant, method, target, started, "not a valid host name")
            return
        except (OSError, TimeoutError):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            up_writer.close()

    def _grant(self, headers: list[str]) -> Grant | None:
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() != "proxy-authorization":
                continue
            scheme, _, encoded = value.strip().partition(" ")
            if scheme.lower() != "basic":
                continue
            try:
                token = base64.b64decode(encoded).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return None
            return self.gateway.grants.get(token)
        return None

    async def _deny(
        self,
        writer: asyncio.StreamWriter,
        grant: Grant,
        method: str,
        target: str,
        started: float,
        why: str,
        *,
        too_many: bool = False,
    ) -> None:
        """Refuse the connection (403, or 429 ``too_many``) and record it (an
        ``egress_denied`` event), both throttled for an agent looping on refusals."""
        target = printable(target)
        text = f"hal egress: {target} is refused ({why})"
        status = b"429 Too Many Requests" if too_many else b"403 Forbidden"
        extra = b""
        seen, wait_s = self.gateway.refusals.count(grant.task_id, started)
        if seen > REFUSALS_PER_MINUTE:  # an agent looping on a refusal: see RefusalLimit
            text = f"hal egress: too many refused connections this minute; wait {wait_s:.0f} s"
            status, extra = b"429 Too Many Requests", f"Retry-After: {wait_s:.0f}\r\n".encode()
        body = text.encode()
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n" + extra
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if seen > REFUSALS_PER_MINUTE + 1:
            return
        record = GatewayRequest(
            task_id=grant.task_id, ts=time.time(), method=printable(method, 16) or "?",
            path=target, status=403, latency_ms=0.0, error="egress_denied",
        )  # fmt: skip
        self.gateway.record_call(record, started, status=int(status[:3]))
