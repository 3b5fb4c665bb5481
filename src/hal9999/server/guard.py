"""ASGI middleware that checks a request's head before anything reads its body.

:class:`FramingGuard` sits in front of everything the daemon serves: it refuses too many
header lines, repeated framing headers, ``Transfer-Encoding`` and a ``Content-Length`` that
is not a plain number of at most :data:`MAX_BODY` bytes. :class:`TokenGuard` sits in front of
the JSON API: without the bearer token the answer is a 401 and the connection closes, before
``receive()`` is ever called, so the body of an unauthenticated request is never read (the
server's own buffer holds at most its flow-control window of it).

Each refusal is one JSON error with a stable code and ``Connection: close``; none is logged
above DEBUG (a hostile client must not be able to fill the daemon's log).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hal9999.server.routing import error_body

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 4 << 20
"""Largest request body accepted (prompts are text; 4 MiB is plenty)."""
MAX_HEADER_LINES = 100
"""Header lines of one request at most."""
MAX_HEAD = 32 << 10
"""Request line and headers together at most: h11 refuses a longer head that arrives in
pieces (its incomplete-event limit), this guard one that arrived whole."""
CONNECTION_KEY = "hal_connection"
"""Where a request's scope ``state`` holds its connection (see :mod:`.listen`)."""
_SINGLE = (b"content-length", b"authorization", b"host")


def connection_of(scope: Scope) -> Any:
    """The listener's connection object of a request (None outside hal's listeners)."""
    state = scope.get("state")
    return state.get(CONNECTION_KEY) if isinstance(state, dict) else None


def mark_authenticated(scope: Scope) -> None:
    """Tell the listener this request's connection showed valid credentials: it no longer
    counts against the cap on unauthenticated connections nor their deadline. The dashboard
    could call it for a valid session; :class:`TokenGuard` does for the bearer token."""
    connection = connection_of(scope)
    if connection is not None:
        connection.mark_authenticated()


async def refuse(send: Send, status: int, code: str, message: str) -> None:
    """Answer with one JSON error and close the connection."""
    logger.debug("refused a request: %d %s: %s", status, code, message)
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def framing_problem(scope: Scope) -> tuple[int, str, str] | None:
    """Why a request's head is refused (status, code, message), or None."""
    headers: list[tuple[bytes, bytes]] = list(scope["headers"])
    if len(headers) > MAX_HEADER_LINES:
        return 431, "header_too_large", f"more than {MAX_HEADER_LINES} header lines"
    size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
    if size + sum(len(n) + len(v) + 4 for n, v in headers) > MAX_HEAD:
        return 431, "header_too_large", f"the request head exceeds {MAX_HEAD} bytes"
    seen: set[bytes] = set()
    length = b"0"
    for name, value in headers:
        name = name.lower()
        if name in _SINGLE:
            if name in seen:
                return 400, "bad_request", f"repeated {name.decode()} header"
            seen.add(name)
        if name == b"transfer-encoding":
            return 400, "bad_request", "Transfer-Encoding is not supported; send Content-Length"
        if name == b"content-length":
            length = value.strip()
    if not length.isdigit() or len(length) > 12:
        return 400, "bad_request", "Content-Length must be a decimal number of bytes"
    if int(length) > MAX_BODY:
        return 413, "payload_too_large", f"the body exceeds {MAX_BODY} bytes"
    return None


class FramingGuard:
    """Refuses requests whose head is malformed or announces too much."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the head; pass the request on untouched when it is fine."""
        if scope["type"] == "http":
            problem = framing_problem(scope)
            if problem is not None:
                await refuse(send, *problem)
                return
        await self.app(scope, receive, send)


class TokenGuard:
    """Lets through only requests that carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def authorized(self, scope: Scope) -> bool:
        """Whether the request shows the token (compared in constant time)."""
        for name, value in scope["headers"]:
            if name.lower() == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    token.strip(), self._token
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse (401, close) or pass on, before anything is received."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.authorized(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401})
                return
            await refuse(send, 401, "unauthorized", "a valid token is needed")
            return
        mark_authenticated(scope)
        await self.app(scope, receive, send)
