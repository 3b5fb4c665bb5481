"""The dashboard's gate, in front of every dashboard route (plain ASGI, so streams pass).

In order: the ``Host`` must name this server (a DNS-rebinding page reaches 127.0.0.1 under its
own host name); ``/api/`` and ``/files/`` refuse what a browser marks as fetched by another
site's page (``Sec-Fetch-Site``: a page on another port of 127.0.0.1 is "same-site"); a
state-changing request or a websocket must come with an ``Origin`` of this server; and
everything that reads or changes data (``/api/``, ``/files/``, the terminal's websocket, any
state-changing request) needs the session's credential (see :mod:`hal9999.dashboard.auth`),
which the page keeps in its origin's storage and sends in a header. No cookie is read: one
reaches (and can be set by) every port of the host. The credential also does what a CSRF
token would: no other page can send it. The page shells, the login and the static files hold
no data and need nothing. Every answer gets the security headers (a Content-Security-Policy
without inline scripts among them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from hal9999.dashboard.auth import (
    SESSION_HEADER,
    SESSION_PROTOCOL,
    DashboardSession,
    SessionKeeper,
)

Scope = MutableMapping[str, Any]
Message = dict[str, Any]

CSP = (
    "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'; img-src 'self' data:; connect-src 'self'; "
    # xterm.js and uPlot size their elements with style attributes; no script can run inline.
    "style-src 'self' 'unsafe-inline'"
)
"""Content-Security-Policy of every answer: scripts only from this server's files."""
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
NOT_STORED = [(b"cache-control", b"no-store")]
"""On the data's answers: the task data (prompts, logs, the patch of the user's code) is not
written to the browser's disk cache, where it stayed after the session ended."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DATA_PREFIXES = ("/api/", "/files/")
"""Paths only the dashboard's own scripts fetch (a browser says who asked in Sec-Fetch-Site)."""
LOGIN_REQUIRED = (
    f"no valid session in {SESSION_HEADER} (a page of the dashboard sends the one it keeps; "
    "log in with the link `hal dashboard` prints)"
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _host_ok(host: str, scope: Scope, allowed: frozenset[str]) -> bool:
    """``host`` is one of our names with the port this server listens on."""
    try:
        parts = urlsplit("//" + host)
        name, port = parts.hostname, parts.port
    except ValueError:
        return False
    if not name or name not in allowed or parts.username or parts.path or "@" in host:
        return False
    server = scope.get("server")
    listening = server[1] if isinstance(server, (tuple, list)) and len(server) == 2 else None
    if listening is None:
        return True
    if port is None:
        port = 443 if scope.get("scheme") in ("https", "wss") else 80
    return bool(port == listening)


def _origin_ok(origin: str | None, host: str, scope: Scope) -> bool:
    """``origin`` is exactly this server (same scheme, host and port as the request)."""
    if not origin:
        return False
    parts = urlsplit(origin)
    secure = scope.get("scheme") in ("https", "wss")
    return parts.scheme == ("https" if secure else "http") and parts.netloc.lower() == host.lower()


def _credential_of(headers: dict[str, str]) -> str | None:
    """The session credential a request carries: its header, or a websocket's subprotocol."""
    if SESSION_HEADER in headers:
        return headers[SESSION_HEADER]
    for offered in headers.get("sec-websocket-protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(SESSION_PROTOCOL):
            return offered[len(SESSION_PROTOCOL) :]
    return None


def session_of(scope: Scope) -> DashboardSession | None:
    """The session the gate found for this request (None on the paths that need none)."""
    found = scope.get("state", {}).get("hal_session")
    return found if isinstance(found, DashboardSession) else None


class DashboardGuard:
    """ASGI middleware: Host, Origin and session checks, and security headers."""

    def __init__(self, app: Any, sessions: SessionKeeper, hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.sessions = sessions
        self.hosts = frozenset(h.lower() for h in (*LOCAL_HOSTS, *hosts))
        """Host names the dashboard answers to (the local ones, and ``--listen``'s)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Check the request, then pass it on with the security headers added."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        websocket = scope["type"] == "websocket"
        method = "WEBSOCKET" if websocket else scope["method"]
        path = scope["path"]
        if not _host_ok(host, scope, self.hosts):
            await self._refuse(scope, send, 421, "host_refused", self._host_refused(scope))
            return
        fetched_by = headers.get("sec-fetch-site", "same-origin")
        if path.startswith(DATA_PREFIXES) and fetched_by not in ("same-origin", "none"):
            # Only our own pages read data. A page on another 127.0.0.1 port is "same-site";
            # its <img src=/api/...> carries no credential anyway, and is refused before it.
            await self._refuse(scope, send, 403, "origin_refused", "cross-site request refused")
            return
        unsafe = websocket or method not in SAFE_METHODS
        if unsafe and not _origin_ok(headers.get("origin"), host, scope):
            await self._refuse(scope, send, 403, "origin_refused", "cross-origin request refused")
            return
        session = None
        if unsafe or path.startswith(DATA_PREFIXES):
            session = self.sessions.check(_credential_of(headers), host)
            if session is None:
                await self._refuse(scope, send, 401, "login_required", LOGIN_REQUIRED)
                return
        scope.setdefault("state", {})["hal_session"] = session
        extra = [*SECURITY_HEADERS, *(NOT_STORED if path.startswith(DATA_PREFIXES) else [])]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                given = message.get("headers", [])
                if any(name.lower() == b"cache-control" for name, _ in given):
                    added = SECURITY_HEADERS  # the event stream's own no-cache
                else:
                    added = extra
                message = {**message, "headers": [*given, *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _host_refused(self, scope: Scope) -> str:
        """The 421's line: the Host is not ours, and the addresses that are (an SSH tunnel or
        a proxy on another port got a bare "not the dashboard" and no way forward)."""
        server = scope.get("server")
        port = server[1] if isinstance(server, (tuple, list)) and len(server) == 2 else None
        names = sorted(f"[{h}]" if ":" in h else h for h in self.hosts)
        where = ", ".join(f"{name}:{port}" if port else name for name in names)
        return (
            f"this Host is not the dashboard: open it as {where} (a forwarded port must keep "
            "the same number; a DNS-rebinding page is refused here)"
        )

    async def _refuse(self, scope: Scope, send: Any, status: int, code: str, text: str) -> None:
        """One JSON line naming the problem (a websocket is closed instead)."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4403 if status != 401 else 4401})
            return
        body = json.dumps({"error": {"code": code, "message": text}}).encode()
        headers = [(b"content-type", b"application/json"), *SECURITY_HEADERS]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
