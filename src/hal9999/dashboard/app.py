"""The dashboard's ASGI app: login, the page shells, static files, and ``/api/...``.

Pages are fixed HTML shells; the scripts in ``static/js`` fill them from the JSON API and the
event stream, building every element with ``textContent`` (agent data is never parsed as
HTML). ``/api/X`` is the daemon's ``/v1/X`` for a logged-in browser: the gate has checked the
session's credential (a header no other page can send: it is the CSRF token too), the bearer
token is added here, so the browser never holds it and the dashboard has exactly the API's
routes (hive ones included). No cookie is set or read.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999.dashboard.auth import SESSION_HEADER, SessionKeeper
from hal9999.dashboard.guard import DashboardGuard, session_of

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from hal9999.server.daemon import Daemon

Scope = dict[str, Any]

PAGES = {
    "/": ("overview", "Overview"),
    "/new": ("new", "New task"),
    "/sandboxes": ("sandboxes", "Sandboxes and pool"),
    "/hive": ("hive", "Hive"),
}
"""Fixed pages: path -> (page name, title)."""
_DROPPED = {b"cookie", b"authorization", b"origin", b"referer", SESSION_HEADER.encode()}
"""Browser headers the API never sees (it gets the bearer token instead)."""
LOGIN_GONE = "this dashboard has no login key (log in with the link `hal dashboard` prints)"
SCRIPTS = (
    "ansi.js", "core.js", "live.js", "render.js", "pages.js", "task.js", "terminal.js", "hive.js",
)  # fmt: skip


def static_dir() -> Path:
    """The shipped static files (scripts, styles, vendored libraries)."""
    return Path(str(resources.files("hal9999.dashboard") / "static"))


def shell(page: str, title: str, arg: str = "", credential: str = "", verifier: str = "") -> str:
    """The HTML of one page: no inline script, no data but the page's name and argument (and
    in the answer to a login link only, the session's credential and the verifier it checks
    the server with, which core.js moves to storage)."""
    vendor = [
        "/static/vendor/xterm-xterm/xterm.js",
        "/static/vendor/xterm-addon-fit/addon-fit.js",
        "/static/vendor/uplot/uPlot.iife.min.js",
    ]
    scripts = "".join(
        f'<script src="{src}" defer></script>'
        for src in (*vendor, *(f"/static/js/{name}" for name in SCRIPTS))
    )
    e = html.escape
    handed = (
        f'<meta name="hal-session" content="{e(credential)}">'
        f'<meta name="hal-verifier" content="{e(verifier)}">'
        if credential
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{handed}<meta name="hal-page" content="{e(page)}">'
        f'<meta name="hal-arg" content="{e(arg)}"><title>{e(title)} · hal</title>'
        '<link rel="stylesheet" href="/static/app.css">'
        '<link rel="stylesheet" href="/static/vendor/xterm-xterm/xterm.css">'
        '<link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css">'
        f"{scripts}</head><body>"
        '<header class="top"><a class="brand" href="/">hal</a><nav>'
        '<a href="/">Overview</a><a href="/new">New task</a>'
        '<a href="/sandboxes">Sandboxes</a><a href="/hive">Hive</a></nav>'
        '<span id="live-state" class="live-state">connecting</span>'
        '<button id="notify" type="button" class="small">Notify me</button></header>'
        f'<main id="main" data-page="{e(page)}"></main></body></html>'
    )


class ApiForward:
    """``/api/X`` of a logged-in browser -> the daemon's ``/v1/X`` with the bearer token."""

    def __init__(self, api: Any, token: str) -> None:
        self.api = api
        self.token = token

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Rewrite the path and headers, then let the API answer (streams included)."""
        path = "/v1" + scope["path"][len("/api") :]
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _DROPPED]
        headers.append((b"authorization", f"Bearer {self.token}".encode()))
        inner = {**scope, "path": path, "raw_path": path.encode(), "headers": headers}
        await self.api(inner, receive, send)


def dashboard_app(
    *,
    home: Path,
    api: Any,
    token: str,
    daemon: Daemon | None = None,
    hosts: Iterable[str] = (),
) -> DashboardGuard:
    """The dashboard for the hal home ``home``, in front of the JSON API app ``api`` (which
    serves ``/v1/...`` and checks ``token``); ``hosts``: extra names it answers to."""
    from starlette.exceptions import HTTPException
    from starlette.middleware.exceptions import ExceptionMiddleware
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route, Router, WebSocketRoute
    from starlette.staticfiles import StaticFiles

    from hal9999.dashboard.files import task_patch
    from hal9999.dashboard.terminal import terminal_endpoint

    sessions = SessionKeeper(home)
    forward = ApiForward(api, token)
    if daemon is not None:
        address = daemon.listen
        hosts = [*hosts, *([address.host] if address is not None else [])]

    async def login(request: Request) -> Response:
        credential = sessions.redeem(request.query_params.get("t", ""), request.headers["host"])
        if credential is None:
            return HTMLResponse(
                "<!doctype html><title>hal</title><p>This login link is not valid (used, "
                "expired or mistyped). Run <code>hal dashboard</code> for a fresh one.</p>",
                status_code=403,
            )
        # The overview, with the credential for core.js to keep in this origin's localStorage
        # (and replace the address by "/", so the token leaves the address bar and the
        # history). Not a redirect: it must reach only this page, never a URL or a cookie.
        name, title = PAGES["/"]
        verifier = sessions.verifier(credential) or ""
        return HTMLResponse(
            shell(name, title, credential=credential, verifier=verifier),
            headers={"cache-control": "no-store"},
        )

    async def hello(request: Request) -> Response:
        # A page checks the server before it sends its credential (see auth.py): the answer
        # proves the key without showing it, and only for this server's own origin.
        sid, challenge = request.query_params.get("sid", ""), request.query_params.get("c", "")
        if not (0 < len(sid) <= 64 and 16 <= len(challenge) <= 128):
            return JSONResponse({"error": {"code": "bad_request",
                                           "message": "sid and c are required"}}, 400)  # fmt: skip
        proof = sessions.prove(sid, challenge, request.headers["host"])
        if proof is None:
            return JSONResponse({"error": {"code": "login_required", "message": LOGIN_GONE}}, 401)
        return JSONResponse({"proof": proof}, headers={"cache-control": "no-store"})

    async def logout(request: Request) -> Response:
        session = session_of(request.scope)
        if session is not None:
            sessions.revoke(session)
        return JSONResponse({"logged_out": True})

    def page(name: str, title: str) -> Any:
        async def endpoint(request: Request) -> Response:
            arg = request.path_params.get("task_id", "")
            return HTMLResponse(shell(name, title, arg), headers={"cache-control": "no-store"})

        return endpoint

    async def patch(request: Request) -> Response:
        if daemon is None:
            return JSONResponse({"error": {"code": "no_daemon", "message": "no daemon"}}, 404)
        return await task_patch(daemon, request.path_params["task_id"])

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes: list[Any] = [
        Route("/login", login),
        Route("/hello", hello),
        Route("/favicon.ico", favicon),
        Route("/logout", logout, methods=["POST"]),
        Route("/tasks/{task_id:str}", page("task", "Task")),
        Route("/files/tasks/{task_id:str}/patch", patch),
        WebSocketRoute("/terminal/{task_id:str}", terminal_endpoint(daemon)),
        Mount("/static", app=StaticFiles(directory=static_dir()), name="static"),
    ]
    routes += [Route(path, page(name, title)) for path, (name, title) in PAGES.items()]

    async def http_error(request: Request, exc: Exception) -> Response:
        # StaticFiles raises HTTPException for a file it does not have (a stale asset, a
        # path out of its directory): with no handler, every one was a 500 and a traceback.
        status = getattr(exc, "status_code", 500)
        message = f"no such file: {request.url.path}" if status == 404 else str(exc)
        return JSONResponse({"error": {"code": "not_found" if status == 404 else "http_error",
                                       "message": message}}, status)  # fmt: skip

    router = ExceptionMiddleware(Router(routes=routes), handlers={HTTPException: http_error})

    async def dispatch(scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/api/"):
            await forward(scope, receive, send)
            return
        await router(scope, receive, send)

    return DashboardGuard(dispatch, sessions, hosts)
