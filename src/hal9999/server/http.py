"""A small HTTP/1.1 JSON server on asyncio streams: routing, bearer auth, keep-alive.

Enough for hal's own API and no more: request bodies are JSON with a ``Content-Length``
(no chunked uploads), responses are JSON. Errors map at this boundary: a :class:`HalError`
becomes its stable ``code`` with a status (404 not found, 409 wrong state, 400 bad input,
500 otherwise); anything else is logged and becomes a 500 without details.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hal9999.errors import (
    ConfigError,
    HalError,
    NotFoundError,
    RepoError,
    SandboxNotFound,
    TaskStateError,
    UnknownAgent,
    UnknownProvider,
)

logger = logging.getLogger(__name__)

MAX_BODY = 4 << 20
"""Largest request body accepted (prompts are text; 4 MiB is plenty)."""
MAX_LINE = 8 << 10
"""Longest request line or header line."""
MAX_HEADER_LINES = 100
MAX_HEAD = 32 << 10
"""Request line and headers together at most."""
MAX_UNAUTHENTICATED = 32
"""Connections at once that have not yet shown the token; more are refused (503)."""
HEAD_TIMEOUT_S = 10.0
"""A connection that has not authenticated sends its whole head within this (slowloris)."""
BODY_TIMEOUT_S = 60.0
"""An authenticated request's body arrives within this."""
IDLE_TIMEOUT_S = 300.0
"""An authenticated keep-alive connection may wait this long for its next request."""
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HttpError(Exception):
    """A request the server answers with an error status and closes the connection on."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def payload(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"code": self.code, "message": str(self)}}


@dataclass
class Head:
    """A request line and its headers, read before anything else of the request."""

    method: str
    target: str
    headers: dict[str, str]


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
    if isinstance(error, NotFoundError | SandboxNotFound):
        return 404
    if isinstance(error, TaskStateError):
        return 409
    # A name or repository the caller got wrong is bad input, like a bad command-line option.
    if isinstance(error, ConfigError | UnknownProvider | UnknownAgent | RepoError):
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
    """Serves a :class:`Router` to clients presenting the bearer token.

    What a client without the token can make the server hold is bounded: it reads at most
    :data:`MAX_HEAD` bytes of head within :data:`HEAD_TIMEOUT_S`, never a body (the token is
    checked from the headers first), and answers at most :data:`MAX_UNAUTHENTICATED` such
    connections at once.
    """

    def __init__(
        self,
        router: Router,
        token: str,
        *,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        log_file: str | None = None,
    ) -> None:
        self.router = router
        self._token = token.encode()
        self.log_file = log_file
        """Where the daemon logs; an internal error's reply names it."""
        self.servers: list[asyncio.Server] = []
        self.requests = 0
        self.max_unauthenticated = max_unauthenticated
        self.head_timeout_s = head_timeout_s
        self.unauthenticated: dict[str, int] = {}
        """Open connections that have not shown the token yet, per listener (``unix`` and
        ``tcp``), so a flood on the TCP port cannot lock the owner out of the unix socket."""

    async def listen_unix(self, path: str) -> None:
        """Accept connections on a unix socket."""
        serve = functools.partial(self._serve, listener="unix")
        server = await asyncio.start_unix_server(serve, path=path, limit=MAX_LINE)
        self.servers.append(server)

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Accept connections on ``host``; returns the port (a free one when 0)."""
        serve = functools.partial(self._serve, listener="tcp")
        server = await asyncio.start_server(serve, host=host, port=port, limit=MAX_LINE)
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

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, listener: str
    ) -> None:
        authenticated = False
        try:
            if self.unauthenticated.get(listener, 0) >= self.max_unauthenticated:
                busy = HttpError(503, "busy", "too many connections waiting to authenticate")
                await _send(writer, busy.status, busy.payload(), close=True)
                return
            self.unauthenticated[listener] = self.unauthenticated.get(listener, 0) + 1
            try:
                while True:
                    wait = IDLE_TIMEOUT_S if authenticated else self.head_timeout_s
                    request = await self._next(reader, wait, authenticated=authenticated)
                    if request is None:
                        break
                    if not authenticated:
                        authenticated = True
                        self.unauthenticated[listener] -= 1
                    self.requests += 1
                    status, payload = await self._dispatch(request)
                    close = request.headers.get("connection", "").lower() == "close"
                    await _send(writer, status, payload, close=close)
                    if close:
                        break
            except HttpError as exc:
                await _send(writer, exc.status, exc.payload(), close=True)
            finally:
                if not authenticated:
                    self.unauthenticated[listener] -= 1
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _next(
        self,
        reader: asyncio.StreamReader,
        wait: float,
        *,
        authenticated: bool,
    ) -> Request | None:
        """The next request: head, token check, then (only then) its body."""
        head = await asyncio.wait_for(_read_head(reader), wait)
        if head is None:
            return None
        if not self._authorized(head.headers):
            raise HttpError(401, "unauthorized", "a valid token is needed")
        length = _content_length(head.headers)
        body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT_S) if length else b""
        url = urlsplit(head.target)
        return Request(head.method, url.path, dict(parse_qsl(url.query)), head.headers, body)

    async def _dispatch(self, request: Request) -> tuple[int, Any]:
        found = self.router.match(request.method, request.path)
        if isinstance(found, int):
            return found, {"error": {"code": "no_route", "message": request.path}}
        handler, request.params = found
        try:
            return 200, await handler(request)
        except HalError as exc:
            return status_for(exc), {"error": exc.to_dict()}
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.path)
            task = request.params.get("id")
            where = f"the daemon's log {self.log_file}" if self.log_file else "the daemon's log"
            message = (
                f"internal error ({type(exc).__name__}) in {request.method} {request.path}"
                + (f" for task {task}" if task else "")
                + f"; the traceback is in {where}"
            )
            return 500, {"error": {"code": "internal", "message": message,
                                   "hint": "this is a bug in hal: please report it"}}  # fmt: skip


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # longer than the stream's limit (MAX_LINE)
        too_long = f"a line is longer than {MAX_LINE} bytes"
        raise HttpError(431, "header_too_large", too_long) from None


async def _read_head(reader: asyncio.StreamReader) -> Head | None:
    """The request line and headers (None at a clean end of the connection)."""
    line = await _read_line(reader)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad_request", "malformed request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    size = len(line)
    for _ in range(MAX_HEADER_LINES + 1):
        raw = await _read_line(reader)
        if raw in (b"\r\n", b"\n"):
            return Head(method.upper(), target, headers)
        if not raw.endswith(b"\n"):
            raise asyncio.IncompleteReadError(raw, None)
        size += len(raw)
        if size > MAX_HEAD:
            raise HttpError(431, "header_too_large", f"the headers exceed {MAX_HEAD} bytes")
        name, colon, value = raw.decode("latin-1").partition(":")
        name = name.strip().lower()
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "bad_request", "malformed header line")
        if name in headers and name in ("content-length", "authorization", "host"):
            raise HttpError(400, "bad_request", f"repeated {name} header")
        headers[name] = value.strip()
    raise HttpError(431, "header_too_large", f"more than {MAX_HEADER_LINES} header lines")


def _content_length(headers: dict[str, str]) -> int:
    """The body's length: digits only, at most :data:`MAX_BODY`; no chunked bodies."""
    if "transfer-encoding" in headers:
        unsupported = "Transfer-Encoding is not supported; send Content-Length"
        raise HttpError(400, "bad_request", unsupported)
    value = headers.get("content-length", "0")
    if not value.isdigit() or not value.isascii() or len(value) > 12:
        raise HttpError(400, "bad_request", "Content-Length must be a decimal number of bytes")
    length = int(value)
    if length > MAX_BODY:
        raise HttpError(413, "payload_too_large", f"the body exceeds {MAX_BODY} bytes")
    return length


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
