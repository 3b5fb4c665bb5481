"""The daemon's listeners: uvicorn's h11 protocol on sockets hal creates, each with its limits.

Each listener (the unix socket, 127.0.0.1) counts its own connections that have not yet
shown credentials, so a flood on the TCP port cannot lock the owner out of the unix socket:

- at most ``max_per_peer`` from one peer, and at most ``max_unauthenticated`` from all peers
  but the owner: one more is answered 503 ``busy`` and closed before a byte of it is read (on
  TLS closed before its handshake: no answer can be sent without one). A peer is the remote
  address of a TCP connection, or, on loopback, the local user whose socket connected (see
  :mod:`.peeruid`). The owner (the daemon's own uid on loopback, anyone on the mode-600 unix
  socket) has ``max_unauthenticated`` places of its own, which no other peer can take: a
  sandbox with ``network = "host"`` reaches a ``--listen`` address from the host's own
  address, and any local user reaches 127.0.0.1; either, holding every shared place, locked
  the operator out of the dashboard and the API;
- each is closed when it has not authenticated within ``head_timeout_s`` (slowloris), its
  TLS handshake included: the handshake starts only once the connection is counted (asyncio's
  TLS server handshakes before the protocol sees the connection, so connections that never
  began one were counted nowhere, and a sandbox could hold as many of hal's descriptors as it
  opened connections);
- a request head larger than :data:`MAX_HEAD` is refused with 431 by h11's own buffer limit,
  and a malformed one with 400, as one JSON error and without a log line above DEBUG.

The unix socket is created here (mode 600 from birth), not by uvicorn, which would make it
world-writable. Only ``hal serve`` imports this module (it imports uvicorn).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, cast

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from hal9999.errors import HomeError
from hal9999.server.guard import CONNECTION_KEY, MAX_HEAD, ASGIApp
from hal9999.server.peeruid import tcp_owner
from hal9999.server.routing import error_body

logger = logging.getLogger(__name__)

MAX_UNAUTHENTICATED = 32
"""Connections at once per listener that have not shown credentials yet."""
MAX_PER_PEER = 8
"""Of those, how many may come from one peer other than the owner (an address, a local user;
a browser opens at most 6 at once)."""
HEAD_TIMEOUT_S = 10.0
"""A connection that has not authenticated is closed after this long."""
KEEP_ALIVE_S = 30.0
"""An authenticated keep-alive connection may wait this long for its next request."""
SHUTDOWN_GRACE_S = 3.0
"""How long stopping waits for requests in flight (streams end at once on their own)."""


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps(error_body(code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _answer(503, "Service Unavailable", "busy", "too many connections waiting to authenticate")


Peer = str | None
"""Whose places a connection takes: ``uid <n>`` (a local user, on loopback), ``loopback``
(one the kernel could not name), a remote address, or None (the unix socket's owner)."""
OWNER: Peer = f"uid {os.getuid()}"
"""The daemon's own user on loopback: the operator, like the unix socket's peer."""


@dataclass
class ListenerLimits:
    """The limits of one listener, and its count of unauthenticated connections."""

    name: str
    max_unauthenticated: int = MAX_UNAUTHENTICATED
    head_timeout_s: float = HEAD_TIMEOUT_S
    max_per_peer: int = MAX_PER_PEER
    unauthenticated: int = 0
    per_peer: dict[Peer, int] = field(default_factory=dict)
    """Unauthenticated connections per peer (see :data:`Peer`)."""
    handshaking: set[asyncio.Transport] = field(default_factory=set)
    """Connections counted whose TLS handshake is under way (closed with the listener)."""

    def admit(self, peer: Peer) -> bool:
        """Count one more unauthenticated connection from ``peer``; False (nothing counted)
        when that would pass a bound: its own, or (not the owner) the one all share."""
        held = self.per_peer.get(peer, 0)
        if peer is None or peer == OWNER:
            if held >= self.max_unauthenticated:
                return False
        else:
            owners = self.per_peer.get(None, 0) + self.per_peer.get(OWNER, 0)
            if held >= self.max_per_peer or self.unauthenticated - owners >= (
                self.max_unauthenticated
            ):
                return False
        self.per_peer[peer] = held + 1
        self.unauthenticated += 1
        return True

    def leave(self, peer: Peer) -> None:
        """A connection :meth:`admit` counted no longer is."""
        self.unauthenticated -= 1
        left = self.per_peer.pop(peer, 1) - 1
        if left > 0:
            self.per_peer[peer] = left


def peer_of(transport: asyncio.BaseTransport) -> Peer:
    """Whose places a connection takes (see :data:`Peer`): a loopback connection's local
    user, a remote one's address, None for a unix socket's."""
    peername = transport.get_extra_info("peername")
    if not isinstance(peername, tuple) or not peername:
        return None
    try:
        address = ipaddress.ip_address(str(peername[0]).split("%")[0])
    except ValueError:
        return str(peername[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    if not (mapped or address).is_loopback:
        return str(peername[0])
    uid = tcp_owner(peername, transport.get_extra_info("sockname"))
    return "loopback" if uid is None else f"uid {uid}"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a cap and a deadline for unauthenticated connections and
    JSON answers to malformed or oversized heads."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        limits: ListenerLimits,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state={})
        # Each request's scope gets a copy of this dict: the guard reaches its connection.
        self.app_state = {CONNECTION_KEY: self}
        self.limits = limits
        self.authenticated = False
        self._counted = False
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._tls = tls
        self._raw: asyncio.Transport | None = None
        """The connection as accepted (under TLS, what the handshake runs over)."""
        self._peer: Peer = None
        self._handshake: asyncio.Task[None] | None = None
        self._early: bytearray | None = None
        """Under TLS, what arrived with the handshake's end, before HTTP took the connection."""
        next_event = self.conn.next_event

        def checked_next_event() -> Any:
            # h11 raises on a malformed head; uvicorn would log a warning and answer plain
            # text. Answer JSON here and report "need data": the transport is closing.
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return h11.NEED_DATA

        self.conn.next_event = checked_next_event  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Refuse at once when the listener (or its place for this address) is full; else
        count, start the deadline, and (TLS) the handshake."""
        assert isinstance(transport, asyncio.Transport)
        peer = peer_of(transport)
        if not self.limits.admit(peer):
            self._refused = True
            if self._tls is None:  # no handshake, no answer: TLS is only closed
                transport.write(_BUSY)
            transport.close()
            return
        self._counted, self._peer, self._raw = True, peer, transport
        self._deadline = self.loop.call_later(self.limits.head_timeout_s, self._too_slow)
        if self._tls is None:
            super().connection_made(transport)
            return
        self.limits.handshaking.add(transport)
        self._early = bytearray()
        self._handshake = self.loop.create_task(self._start_tls(transport, self._tls))

    async def _start_tls(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        """The TLS handshake of a counted connection, then HTTP over it; a handshake that
        fails, or that the deadline cuts, ends the connection and its place."""
        try:
            secure = await self.loop.start_tls(
                raw, self, tls, server_side=True,
                ssl_handshake_timeout=self.limits.head_timeout_s,
            )  # fmt: skip
        except Exception as exc:  # the client's doing: nothing to log above DEBUG
            logger.debug("TLS handshake failed: %s", exc)
            secure = None
        finally:
            self.limits.handshaking.discard(raw)
        if secure is None or raw.is_closing():
            self._release()
            raw.close()
            return
        early, self._early = self._early, None
        super().connection_made(secure)
        if early:
            super().data_received(bytes(early))

    def pause_writing(self) -> None:
        """HTTP's flow control, once HTTP has the connection (not during a handshake)."""
        if self._early is None:
            super().pause_writing()

    def resume_writing(self) -> None:
        """HTTP's flow control, once HTTP has the connection (not during a handshake)."""
        if self._early is None:
            super().resume_writing()

    def data_received(self, data: bytes) -> None:
        """Handled by HTTP; under TLS, held until the handshake's end reaches HTTP (the TLS
        layer hands on what came with its last flight before ``start_tls`` returns)."""
        if self._early is not None:
            self._early += data
            return
        super().data_received(data)

    def mark_authenticated(self) -> None:
        """Credentials were shown: no longer counted, no deadline (idempotent)."""
        self.authenticated = True
        self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.limits.leave(self._peer)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.authenticated or self._raw is None:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # under TLS, ends the session and the raw connection
        elif not self._raw.is_closing():
            self._raw.close()  # a handshake still under way

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self.transport.is_closing():
            return
        if exc.error_status_hint == 431:
            answer = _answer(431, "Request Header Fields Too Large", "header_too_large",
                             f"the request head exceeds {MAX_HEAD} bytes")  # fmt: skip
        else:
            answer = _answer(400, "Bad Request", "bad_request", f"malformed request: {exc}")
        logger.debug("malformed request: %s", exc)
        self.transport.write(answer)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Release this connection's place (nothing to do for a refused one)."""
        if self._refused:
            return
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """The websocket protocol takes the transport: this connection stops counting (the
        websocket's endpoint checks its own credentials)."""
        self._release()
        super().handle_websocket_upgrade(event)


def unix_socket(path: str) -> socket.socket:
    """A listening unix socket at ``path``, private to this user from its creation (what
    stands there, an earlier daemon's socket, is replaced; a directory is a HomeError)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _unusable_socket(path, exc) from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise _unusable_socket(path, exc) from exc
    finally:
        os.umask(old_umask)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _unusable_socket(path: str, exc: OSError) -> HomeError:
    """The one line for a socket path hal cannot take (a directory there, no permission)."""
    if exc.errno in (errno.EISDIR, errno.EPERM) and os.path.isdir(path):
        return HomeError(
            f"{path}, where hal serve's socket goes, is a directory",
            hint=f"remove it (`rmdir {path}`) and start hal serve again",
        )
    return HomeError(
        f"cannot make hal serve's socket {path}: {exc.strerror or exc}",
        hint="give hal back its data directory (HAL_HOME) writable, or set HAL_HOME to one that is",
    )


def tcp_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (a free port when ``port`` is 0; IPv6 for a host with ``:``)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:  # a taken port: the caller may try another
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def websocket_protocol(**made: Any) -> asyncio.Protocol:
    """uvicorn's websocket protocol (its ``ws="auto"``: websockets' sans-I/O one), imported
    at the first websocket (the dashboard's terminal) instead of at the daemon's start:
    :mod:`websockets` is a visible share of the work before ``hal serve`` answers."""
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is None:  # neither websockets nor wsproto: not installed
        raise RuntimeError("no websocket library is installed")
    return AutoWebSocketsProtocol(**made)


class Listener:
    """Serves an ASGI app on one socket with its own :class:`ListenerLimits`."""

    def __init__(self, app: ASGIApp, limits: ListenerLimits) -> None:
        self.limits = limits
        self.config = Config(
            app,
            lifespan="off",
            ws=cast(Any, websocket_protocol),  # a factory, called as its class would be
            proxy_headers=False,
            server_header=False,
            date_header=False,
            access_log=False,
            log_config=None,
            h11_max_incomplete_event_size=MAX_HEAD,
            timeout_keep_alive=int(KEEP_ALIVE_S),
        )
        self.config.load()
        self.state = ServerState()
        self.server: asyncio.Server | None = None

    @property
    def requests(self) -> int:
        """Requests answered so far."""
        return self.state.total_requests

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Accept connections on ``sock`` (with TLS when ``tls`` is given)."""
        loop = asyncio.get_running_loop()
        # The protocol starts a TLS handshake itself, once it has counted the connection
        # (asyncio's own would run before the protocol sees the connection, uncounted).
        self.server = await loop.create_server(
            lambda: GuardedH11Protocol(self.config, self.state, self.limits, tls), sock=sock
        )

    async def close(self) -> None:
        """Stop accepting, close idle connections, give requests in flight a moment."""
        if self.server is None:
            return
        self.server.close()
        for raw in list(self.limits.handshaking):
            raw.close()
        for connection in list(self.state.connections):
            connection.shutdown()
        if self.state.tasks:
            _, pending = await asyncio.wait(list(self.state.tasks), timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for connection in list(self.state.connections):
            if connection.transport is not None:
                connection.transport.close()
        await self.server.wait_closed()
        self.server = None


class HalServer:
    """One app on several listeners (the unix socket, 127.0.0.1), each with its own limits."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        max_per_peer: int = MAX_PER_PEER,
    ) -> None:
        self.app = app
        self.max_unauthenticated = max_unauthenticated
        self.head_timeout_s = head_timeout_s
        self.max_per_peer = max_per_peer
        self.listeners: list[Listener] = []

    @property
    def requests(self) -> int:
        """Requests answered so far, on every listener."""
        return sum(listener.requests for listener in self.listeners)

    def _listener(self, name: str, app: ASGIApp | None = None) -> Listener:
        limits = ListenerLimits(
            name, self.max_unauthenticated, self.head_timeout_s, self.max_per_peer
        )
        listener = Listener(app or self.app, limits)
        self.listeners.append(listener)
        return listener

    async def listen_unix(self, path: str, app: ASGIApp | None = None) -> None:
        """Accept connections on a unix socket (mode 600) at ``path``, serving ``app``
        (default: the server's)."""
        await self._listener("unix", app).start(unix_socket(path))

    async def listen_tcp(
        self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> int:
        """Accept connections on ``host`` (TLS with ``tls``); returns the port (a free one
        when 0)."""
        sock = tcp_socket(host, port)
        bound = int(sock.getsockname()[1])
        await self._listener("tcp" if tls is None else "tls").start(sock, tls)
        return bound

    async def close(self) -> None:
        """Stop every listener."""
        await asyncio.gather(*(listener.close() for listener in self.listeners))
