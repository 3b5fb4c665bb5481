"""The JSON API's route table and its adapter to Starlette.

A route is data (method, path pattern, handler, a summary and optional schemas) so that the
same table serves requests and describes itself (:mod:`hal9999.server.openapi`). Handlers
take an :class:`ApiRequest` and return JSON-ready data (status 200) or raise
:class:`HalError`. Errors map here, at the boundary: a :class:`HalError` becomes its stable
``code`` with a status (404 not found, 409 wrong state, 403 not the caller's thread, 429 a
hive rate limit, 400 bad input or a request the hive refuses, 500 otherwise);
anything else is logged and becomes a 500 that names the daemon's log, without details.

Starlette is imported inside :func:`starlette_routes` only: the CLI imports this module's
types (through ``api.py`` in tests) without paying for the server stack.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hal9999.errors import (
    ConfigError,
    DiskFull,
    HalError,
    HiveError,
    HiveLimited,
    NotFoundError,
    RepoError,
    SandboxNotFound,
    TaskStateError,
    ThreadForbidden,
    ThreadStateError,
    UnknownAgent,
    UnknownProvider,
    UsageError,
)
from hal9999.server.client import DEADLINE_HEADER, DaemonUnavailable

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

logger = logging.getLogger(__name__)

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate, which may decode to a lone one."""


@dataclass
class ApiRequest:
    """One request as a handler sees it: the body already read (bounded by the guard)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    """Values of ``{name}`` segments of the matched route."""
    _data: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body is ``{}``), read once."""
        if self._data is None:
            self._data = self._parse()
        return self._data

    def _parse(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            if "int_max_str_digits" in str(exc):  # its advice is for the daemon's code
                raise ConfigError(
                    "the request body holds a number too long to read (more than "
                    f"{sys.get_int_max_str_digits()} digits)",
                    hint="send numbers within the ranges of their fields",
                ) from exc
            raise ConfigError(f"the request body is not JSON: {exc}") from exc
        except RecursionError as exc:  # [[[[... deeper than the parser's stack
            raise ConfigError(
                "the request body nests too deeply", hint="send a flat JSON object"
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError("the request body must be a JSON object")
        if _SURROGATE_ESCAPE.search(self.body) and not _is_text(data):
            # No database, file or JSON encoder takes one: the store's insert raised, a 500.
            raise ConfigError(
                "the request body holds a lone UTF-16 surrogate (an escape such as \\ud800)",
                hint="send text as UTF-8, or escape a character past U+FFFF as a surrogate pair",
            )
        return data

    def name(self, key: str) -> str | None:
        """A name query parameter: None when absent; an empty one is refused (``?agent=``
        was read as left out, and answered for every agent)."""
        value = self.query.get(key)
        if value == "":
            raise ConfigError(f"{key} must be a name (or left out)")
        return value

    def flag(self, name: str) -> bool:
        """A yes/no query parameter: ``1`` or ``true`` is yes; ``0``, ``false``, empty or
        absent is no; anything else is refused (``all=yes`` was read as no, and answered)."""
        value = self.query.get(name, "")
        if value in ("1", "true"):
            return True
        if value in ("", "0", "false"):
            return False
        shown = value if len(value) <= 60 else value[:60] + "…"
        raise ConfigError(
            f"query parameter {name} must be 1 or true (yes), 0 or false (no), not {shown!r}",
            hint=f"send {name}=1 or leave it out",
        )


def _is_text(data: Any) -> bool:
    """Whether every string of decoded JSON ``data`` (keys too) can be encoded as UTF-8."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


Handler = Callable[[ApiRequest], Awaitable[Any]]
"""Returns JSON-ready data (status 200) or raises :class:`HalError`."""
Raw = Callable[["Request"], Awaitable["Response"]]
"""A handler that answers by itself (a stream); it gets Starlette's request."""


@dataclass(frozen=True)
class ApiRoute:
    """One route of the API and what the OpenAPI schema says of it."""

    method: str
    path: str
    handler: Handler | None
    summary: str
    body: dict[str, Any] | Callable[[], dict[str, Any]] | None = None
    """JSON schema of the request body (None: no body), or what makes it when the OpenAPI
    document is asked for (then ``body_fields`` names its properties)."""
    response: dict[str, Any] | None = None
    """JSON schema of the 200 answer (None: any JSON)."""
    query: tuple[str, ...] = ()
    """Names of the query parameters it reads."""
    raw: Raw | None = None
    """Set for a route that streams (server-sent events) instead of returning JSON."""
    media_type: str = "application/json"
    body_fields: frozenset[str] | None = None
    """The properties of a ``body`` made on demand (read at the route's build)."""

    @property
    def fields(self) -> frozenset[str]:
        """The names its body may hold: none when it declares no body (``{"provider": ...}``
        to ``POST /v1/pool/drain`` drained every provider, the name unread)."""
        if self.body is None:
            return frozenset()
        if self.body_fields is not None:
            return self.body_fields
        return frozenset(self.body_schema().get("properties", {}))

    def body_schema(self) -> dict[str, Any]:
        """The JSON schema of its body, made now if it is made on demand."""
        assert self.body is not None
        return self.body() if callable(self.body) else self.body


class Router:
    """The route table: ``METHOD /path/{param}`` to handlers."""

    def __init__(self) -> None:
        self.routes: list[ApiRoute] = []

    def add(
        self, method: str, path: str, handler: Handler, summary: str = "", **schema: Any
    ) -> None:
        """Register ``handler`` for ``method`` on ``path`` (``{name}`` is one segment)."""
        summary = summary or (handler.__doc__ or "").strip() or f"{method} {path}"
        self.routes.append(ApiRoute(method, path, handler, summary, **schema))

    def add_stream(self, path: str, endpoint: Raw, summary: str, **schema: Any) -> None:
        """Register a ``GET`` that answers by itself (``text/event-stream``)."""
        self.routes.append(
            ApiRoute(
                "GET", path, None, summary, raw=endpoint, media_type="text/event-stream", **schema
            )
        )


def status_for(error: HalError) -> int:
    """The HTTP status of an error."""
    if isinstance(error, NotFoundError | SandboxNotFound):
        return 404
    if isinstance(error, DiskFull):
        return 507
    if isinstance(error, TaskStateError | ThreadStateError):
        return 409
    if isinstance(error, ThreadForbidden):
        return 403
    if isinstance(error, HiveLimited):
        return 429
    if isinstance(error, DaemonUnavailable):
        return 503
    # A name that is taken, reserved or malformed, an empty or oversized message: the hive
    # refused what the caller asked, which is not the daemon failing.
    if isinstance(error, HiveError):
        return 400
    # A name or repository the caller got wrong is bad input, like a bad command-line option.
    if isinstance(error, ConfigError | UnknownProvider | UnknownAgent | RepoError):
        return 400
    return 500


def error_body(code: str, message: str, hint: str | None = None) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": {"code": code, "message": message, "hint": hint}}


def internal_error(
    kind: str, method: str, path: str, task: str | None, log_file: str | None
) -> str:
    """What a caller is told of a bug (``kind``: the exception's class): where the traceback
    is, never the exception's text."""
    where = f"the daemon's log {log_file}" if log_file else "the daemon's log"
    return (
        f"internal error ({kind}) in {method} {path}"
        + (f" for task {task}" if task else "")
        + f"; the traceback is in {where}"
    )


def check_fields(body: dict[str, Any], fields: frozenset[str]) -> None:
    """Refuse a body with a name its route does not read (a typo such as ``promt`` was a
    task with an empty prompt, the typo silently dropped): one :class:`UsageError` naming the
    first unknown name and the known ones."""
    unknown = [name for name in body if name not in fields]
    if not unknown:
        return
    name = unknown[0] if len(unknown[0]) <= 64 else unknown[0][:64] + "..."
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    known = ", ".join(sorted(fields)) or "none"
    raise UsageError(
        f"unknown field {name!r} in the request body{more}",
        hint=f"the fields it takes: {known}",
    )


def check_deadline(request: ApiRequest) -> None:
    """Refuse a request read after its client's :data:`DEADLINE_HEADER` (the client has
    said it failed: carrying it out now would do what the user was told was not done)."""
    raw = request.headers.get(DEADLINE_HEADER.lower())
    if raw is None:
        return
    try:
        deadline = float(raw)
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline):
        raise ConfigError(
            f"the {DEADLINE_HEADER} header must be a time in seconds since the epoch",
            hint=f"send the time the client gives up, or leave {DEADLINE_HEADER} out",
        )
    late = time.time() - deadline
    if late < 0:
        return
    logger.warning(
        "dropped %s %s: its client gave up %.1f s before the daemon read it",
        request.method,
        request.path,
        late,
    )
    raise DaemonUnavailable(
        f"hal serve read {request.method} {request.path} {late:.1f} s after its client gave "
        "up, and did not carry it out",
        hint="the daemon was stopped or too busy to answer in time; ask again",
    )


async def call_handler(
    handler: Handler,
    request: ApiRequest,
    log_file: str | None,
    fields: frozenset[str] | None = None,
) -> tuple[int, Any]:
    """Run ``handler``, mapping errors to a status and an error body. A body is read as
    JSON first whatever the route (one that takes none ignored a body that was not JSON);
    with ``fields`` (the route's :attr:`ApiRoute.fields`), a name outside them is refused."""
    try:
        check_deadline(request)
        body = request.json()
        if fields is not None:
            check_fields(body, fields)
        return 200, await handler(request)
    except HalError as exc:
        return status_for(exc), {"error": exc.to_dict()}
    except Exception as exc:
        from hal9999.failures import known_failure

        if (known := known_failure(exc)) is not None:  # the machine's state, not a bug
            logger.warning("%s %s: %s", request.method, request.path, known.one_line())
            status = status_for(known) if isinstance(known, DiskFull) else 503
            return status, {"error": known.to_dict()}
        logger.exception("%s %s failed", request.method, request.path)
        task = request.params.get("id")
        message = internal_error(type(exc).__name__, request.method, request.path, task, log_file)
        return 500, error_body("internal", message, "this is a bug in hal: please report it")


def starlette_routes(router: Router, log_file: str | None = None) -> list[BaseRoute]:
    """The table as Starlette routes (imported here: only the daemon pays for Starlette)."""
    from starlette.responses import Response
    from starlette.routing import Route

    def endpoint(
        handler: Handler, fields: frozenset[str] | None
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            api_request = ApiRequest(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
                params={k: str(v) for k, v in request.path_params.items()},
            )
            status, payload = await call_handler(handler, api_request, log_file, fields)
            body = json.dumps(payload, default=str).encode()
            return Response(body, status, media_type="application/json")

        return run

    routes: list[BaseRoute] = []
    for route in router.routes:
        if route.raw is not None:
            routes.append(Route(route.path, route.raw, methods=[route.method]))
        elif route.handler is not None:
            handler = endpoint(route.handler, route.fields)
            routes.append(Route(route.path, handler, methods=[route.method]))
    return routes


def path_params(path: str) -> list[str]:
    """The ``{name}`` segments of a route's path."""
    return re.findall(r"\{(\w+)\}", path)
