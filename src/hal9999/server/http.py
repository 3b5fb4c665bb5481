"""A small HTTP/1.1 JSON server on asyncio streams: routing, bearer auth, keep-alive.

Enough for hal's own API and no more: request bodies are JSON with a ``Content-Length``
(no chunked uploads), responses are JSON. Errors map at this boundary: a :class:`HalError`
becomes its stable ``code`` with a status (404 not found, 409 wrong state, 400 bad input,
500 otherwise); anything else is logged and becomes a 500 without details.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hal9999.errors import ConfigError, HalError, NotFoundError, TaskStateError

logger = logging.getLogger(__name__)

MAX_BODY = 4 << 20
"""Largest request body accepted (prompts are text; 4 MiB is plenty)."""
MAX_HEADER_LINES = 100
IDLE_TIMEOUT_S = 300.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            500: "Internal Server Error"}  # fmt: skip


@dataclass
class Request:
    """One parsed request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    """Values of ``{name}`` segments of the matched route."""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body is ``{}``)."""
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise ConfigError(f"the request body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("the request body must be a JSON object")
        return data


Handler = Callable[[Request], Awaitable[Any]]
"""Returns JSON-ready data (status 200) or raises :class:`HalError`."""


def status_for(error: HalError) -> int:
    """The HTTP status of an error."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, TaskStateError):
        return 409
    if isinstance(error, ConfigError):
        return 400
    return 500


class Router:
    """Routes ``METHOD /path/{param}`` to handlers."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` on ``pattern`` (``{name}`` is one segment)."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | int:
        """The handler and its params, or 404/405."""
        allowed = False
        for route_method, regex, handler in self._routes:
            found = regex.match(path)
            if found:
                if route_method == method:
                    return handler, found.groupdict()
                allowed = True
        return 405 if allowed else 404


class HttpServer:
    """Serves a :class:`Router` to clients presenting the bearer token."""

    def __init__(self, router: Router, token: str) -> None:
        self.router = router
        self._token = token.encode()
        self.servers: list[asyncio.Server] = []
        self.requests = 0

    async def listen_unix(self, path: str) -> None:
        """Accept connections on a unix socket."""
        self.servers.append(await asyncio.start_unix_server(self._serve, path=path))

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Accept connections on ``host``; returns the port (a free one when 0)."""
        server = await asyncio.start_server(self._serve, host=host, port=port)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting connections."""
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()

    def _authorized(self, headers: dict[str, str]) -> bool:
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await asyncio.wait_for(_read_request(reader), IDLE_TIMEOUT_S)
                if request is None:
                    break
                if isinstance(request, int):
                    await _send(writer, request, {"error": {"code": "bad_request"}}, close=True)
                    break
                self.requests += 1
                status, payload = await self._dispatch(request)
                close = request.headers.get("connection", "").lower() == "close"
                await _send(writer, status, payload, close=close)
                if close:
                    break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _dispatch(self, request: Request) -> tuple[int, Any]:
        if not self._authorized(request.headers):
            return 401, {"error": {"code": "unauthorized", "message": "a valid token is needed"}}
        found = self.router.match(request.method, request.path)
        if isinstance(found, int):
            return found, {"error": {"code": "no_route", "message": request.path}}
        handler, request.params = found
        try:
            return 200, await handler(request)
        except HalError as exc:
            return status_for(exc), {"error": exc.to_dict()}
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return 500, {"error": {"code": "internal", "message": "internal error, see the log"}}


async def _read_request(reader: asyncio.StreamReader) -> Request | int | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        return 400
    method, target, _version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        return 400
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY:
        return 413
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return Request(method.upper(), url.path, dict(parse_qsl(url.query)), headers, body)


async def _send(writer: asyncio.StreamWriter, status: int, payload: Any, *, close: bool) -> None:
    body = json.dumps(payload, default=str).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
