"""The daemon's listeners: uvicorn's h11 protocol on sockets hal creates, each with its limits.

Each listener (the unix socket, 127.0.0.1) counts its own connections that have not yet
shown credentials, so a flood on the TCP port cannot lock the owner out of the unix socket:

- at most ``max_unauthenticated`` at once; one more is answered 503 ``busy`` and closed
  before a byte of it is read;
- each is closed when it has not authenticated within ``head_timeout_s`` (slowloris);
- a request head larger than :data:`MAX_HEAD` is refused with 431 by h11's own buffer limit,
  and a malformed one with 400, as one JSON error and without a log line above DEBUG.

The unix socket is created here (mode 600 from birth), not by uvicorn, which would make it
world-writable. Only ``hal serve`` imports this module (it imports uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from hal9999.server.guard import CONNECTION_KEY, MAX_HEAD, ASGIApp
from hal9999.server.routing import error_body

logger = logging.getLogger(__name__)

MAX_UNAUTHENTICATED = 32
"""Connections at once per listener that have not shown credentials yet."""
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


@dataclass
class ListenerLimits:
    """The limits of one listener, and its count of unauthenticated connections."""

    name: str
    max_unauthenticated: int = MAX_UNAUTHENTICATED
    head_timeout_s: float = HEAD_TIMEOUT_S
    unauthenticated: int = 0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a cap and a deadline for unauthenticated connections and
    JSON answers to malformed or oversized heads."""

    def __init__(self, config: Config, server_state: ServerState, limits: ListenerLimits) -> None:
        super().__init__(config, server_state, app_state={})
        # Each request's scope gets a copy of this dict: the guard reaches its connection.
        self.app_state = {CONNECTION_KEY: self}
        self.limits = limits
        self.authenticated = False
        self._counted = False
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
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
        """Refuse at once when the listener is full; else count and start the deadline."""
        assert isinstance(transport, asyncio.Transport)
        if self.limits.unauthenticated >= self.limits.max_unauthenticated:
            self._refused = True
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self.limits.unauthenticated += 1
        self._counted = True
        self._deadline = self.loop.call_later(self.limits.head_timeout_s, self._too_slow)

    def mark_authenticated(self) -> None:
        """Credentials were shown: no longer counted, no deadline (idempotent)."""
        self.authenticated = True
        self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.limits.unauthenticated -= 1
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.authenticated and not self.transport.is_closing():
            self.transport.close()

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
    """A listening unix socket at ``path``, private to this user from its creation."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def tcp_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (a free port when ``port`` is 0; IPv6 for a host with ``:``)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Listener:
    """Serves an ASGI app on one socket with its own :class:`ListenerLimits`."""

    def __init__(self, app: ASGIApp, limits: ListenerLimits) -> None:
        self.limits = limits
        self.config = Config(
            app,
            lifespan="off",
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
        # A TLS handshake happens before the connection is counted: it gets the same
        # deadline as an unauthenticated head, not asyncio's default minute.
        self.server = await loop.create_server(
            lambda: GuardedH11Protocol(self.config, self.state, self.limits),
            sock=sock,
            ssl=tls,
            ssl_handshake_timeout=self.limits.head_timeout_s if tls is not None else None,
        )

    async def close(self) -> None:
        """Stop accepting, close idle connections, give requests in flight a moment."""
        if self.server is None:
            return
        self.server.close()
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
    ) -> None:
        self.app = app
        self.max_unauthenticated = max_unauthenticated
        self.head_timeout_s = head_timeout_s
        self.listeners: list[Listener] = []

    @property
    def requests(self) -> int:
        """Requests answered so far, on every listener."""
        return sum(listener.requests for listener in self.listeners)

    def _listener(self, name: str, app: ASGIApp | None = None) -> Listener:
        limits = ListenerLimits(name, self.max_unauthenticated, self.head_timeout_s)
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
