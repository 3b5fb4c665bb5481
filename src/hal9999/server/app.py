"""The daemon's ASGI app: the JSON API under ``/v1/`` and, when installed, the dashboard.

::

    FramingGuard                     every request: header count, framing, body size
      /v1/...  -> TokenGuard -> API   bearer token before the body; routes of api.py + SSE
      anything else -> dashboard      hal9999.dashboard (its own login, a per-origin session),
                                      or the API (so: 401 / 404) when there is none

The seam for the dashboard is :func:`dashboard_for`: it calls
``hal9999.dashboard.app.dashboard_app(home=, api=, token=, daemon=)`` with the guarded API
app, which the dashboard forwards its ``/api/...`` requests to. :class:`ServerContext` is
what every part of the server may use.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999.server.guard import ASGIApp, FramingGuard, Receive, Scope, Send, TokenGuard
from hal9999.server.routing import Router, error_body, starlette_routes

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from hal9999.events.bus import EventBus
    from hal9999.server.daemon import Daemon
    from hal9999.server.sse import EventFeed
    from hal9999.store import Store

API_PREFIX = "/v1/"


@dataclass
class ServerContext:
    """What the API, the streams and the dashboard work with."""

    home: Path
    token: str
    """The bearer token of the JSON API (the dashboard adds it when it forwards)."""
    daemon: Daemon | None = None
    """The running daemon: its ``service`` (tasks), ``scheduler``, ``pool``, ``config``."""
    store: Store | None = None
    bus: EventBus | None = None
    feed: EventFeed | None = None
    """Every recorded event in ``gseq`` order, for the event streams."""
    events_path: Callable[[str], Path | None] = field(default=lambda task_id: None)
    """The events file of a task (None once it is removed)."""
    log_file: str | None = None
    """The daemon's log, named in the answer to an internal error."""

    @classmethod
    def of_daemon(cls, daemon: Daemon, token: str) -> ServerContext:
        """The context of a running daemon."""
        return cls(
            home=daemon.config.home,
            token=token,
            daemon=daemon,
            store=daemon.store,
            bus=daemon.bus,
            feed=daemon.feed,
            events_path=daemon.events_path,
            log_file=str(daemon.files.log_file),
        )


def _json_error(status: int, code: str) -> Callable[[Request, Exception], Response]:
    def handle(request: Request, exc: Exception) -> Response:
        from starlette.responses import Response

        # Said as a problem with its fix: the bare "POST /v1/x" was all a client printed.
        what = f"{request.method} {request.url.path}"
        message = (f"the daemon has no route {what}" if status == 404
                   else f"{request.method} is not allowed on {request.url.path}")  # fmt: skip
        hint = "the routes are listed at /v1/openapi.json (is hal serve of another version?)"
        body = json.dumps(error_body(code, message, hint)).encode()
        return Response(body, status, media_type="application/json")

    return handle


def build_api(ctx: ServerContext, router: Router) -> ASGIApp:
    """The JSON API behind the bearer token: the router's routes and ``/v1/openapi.json``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from hal9999.server.openapi import openapi_schema

    built: list[dict[str, Any]] = []

    async def openapi(request: Request) -> Response:
        # Built at the first request, off the loop, not at each daemon's start (dear
        # in CPU for a document few clients ask for).
        if not built:
            schema = await asyncio.to_thread(openapi_schema, router)
            if not built:
                built.append(schema)
        return JSONResponse(built[0])

    routes = [*starlette_routes(router, ctx.log_file), Route("/v1/openapi.json", openapi)]
    app = Starlette(
        routes=routes,
        exception_handlers={
            404: _json_error(404, "no_route"),
            405: _json_error(405, "method_not_allowed"),
        },
    )
    # A path with a trailing slash is no route of the API (404), not a 307 to another one.
    app.router.redirect_slashes = False
    return TokenGuard(app, ctx.token)


def dashboard_for(ctx: ServerContext, api: ASGIApp) -> ASGIApp | None:
    """The dashboard in front of ``api``, when the ``hal9999.dashboard`` package is there."""
    try:
        module = importlib.import_module("hal9999.dashboard.app")
    except ModuleNotFoundError as exc:
        if exc.name in ("hal9999.dashboard", "hal9999.dashboard.app"):
            return None
        raise
    app: ASGIApp = module.dashboard_app(home=ctx.home, api=api, token=ctx.token, daemon=ctx.daemon)
    return app


def build_app(ctx: ServerContext, router: Router | None = None, *, dashboard: bool = True) -> Any:
    """The whole app: ``router`` (default: every route of the daemon's API) under ``/v1/``,
    the dashboard (unless ``dashboard`` is False) for every other path."""
    if router is None:
        from hal9999.server.api import build_router

        assert ctx.daemon is not None, "the daemon's routes need the daemon"
        router = build_router(ctx.daemon, ctx)
    api = build_api(ctx, router)
    pages = dashboard_for(ctx, api) if dashboard else None

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if pages is None or path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/"):
            await api(scope, receive, send)
        else:
            await pages(scope, receive, send)

    return FramingGuard(dispatch)
