"""A fake OAuth 2.0 authorization server with PKCE, shaped like Anthropic's for Claude.

    GET  /oauth/authorize   response_type=code, client_id, redirect_uri, scope, state,
                            code_challenge, code_challenge_method=S256 -> 302 to
                            redirect_uri?code=..&state=.. (consent is automatic), or
                            ?error=access_denied when ``deny`` is set
    POST /v1/oauth/token    JSON bodies: grant_type=authorization_code (code, client_id,
                            redirect_uri, code_verifier checked against the challenge; a code
                            works once) or grant_type=refresh_token (single use: rotated)

Errors are RFC 6749 JSON (``error``, ``error_description``) with 400, or 401 for an
unknown client; ``fail_next`` injects a 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.fakes.vendor_api import SHUTDOWN_POLL_S

CLIENT_ID = "hal-test-client"


@dataclass
class Issued:
    """A code waiting to be exchanged."""

    client_id: str
    redirect_uri: str
    challenge: str
    scope: str


@dataclass
class FakeOAuth:
    """The server's state; ``url`` once started."""

    expires_in: int = 3600
    deny: bool = False
    fail_next: int = 0
    codes: dict[str, Issued] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    access_tokens: list[str] = field(default_factory=list)
    token_calls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def __enter__(self) -> FakeOAuth:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        """The authorization endpoint: a redirect with a code (or an error)."""
        redirect = query.get("redirect_uri", "")
        if query.get("client_id") != CLIENT_ID or not redirect.startswith("http://127.0.0.1:"):
            return 400, {}, {"error": "invalid_request", "error_description": "bad client"}
        back = {"state": query.get("state", "")}
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            back |= {"error": "invalid_request", "error_description": "PKCE S256 required"}
        elif self.deny:
            back |= {"error": "access_denied", "error_description": "the user said no"}
        else:
            code = secrets.token_urlsafe(16)
            with self.lock:
                self.codes[code] = Issued(CLIENT_ID, redirect, query["code_challenge"],
                                          query.get("scope", ""))  # fmt: skip
            back["code"] = code
        return 302, {"location": f"{redirect}?{urlencode(back)}"}, None

    def token(self, body: Any) -> tuple[int, Any]:
        """The token endpoint."""
        with self.lock:
            self.token_calls.append(body if isinstance(body, dict) else {})
            if self.fail_next:
                self.fail_next -= 1
                return 503, {"error": "temporarily_unavailable"}
        if not isinstance(body, dict):
            return 400, {"error": "invalid_request", "error_description": "JSON body expected"}
        if body.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        grant = body.get("grant_type")
        with self.lock:
            if grant == "authorization_code":
                issued = self.codes.pop(str(body.get("code")), None)
                if issued is None:
                    return 400, {"error": "invalid_grant", "error_description": "unknown code"}
                verifier = str(body.get("code_verifier", ""))
                digest = hashlib.sha256(verifier.encode()).digest()
                challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                if challenge != issued.challenge or body.get("redirect_uri") != issued.redirect_uri:
                    return 400, {"error": "invalid_grant", "error_description": "PKCE mismatch"}
                scope = issued.scope
            elif grant == "refresh_token":
                token = str(body.get("refresh_token"))
                if token not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant", "error_description": "refresh token"}
                self.refresh_tokens.discard(token)  # single use
                scope = "user:inference"
            else:
                return 400, {"error": "unsupported_grant_type"}
            access, refresh = f"sk-ant-oat01-{secrets.token_urlsafe(24)}", secrets.token_urlsafe(24)
            self.access_tokens.append(access)
            self.refresh_tokens.add(refresh)
        return 200, {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                     "expires_in": self.expires_in, "scope": scope}  # fmt: skip


def _handler(fake: FakeOAuth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, headers: dict[str, str], body: Any) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            split = urlsplit(self.path)
            if split.path != "/oauth/authorize":
                return self._answer(404, {}, {"error": "not_found"})
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            self._answer(*fake.authorize(query))

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if urlsplit(self.path).path != "/v1/oauth/token":
                return self._answer(404, {}, {"error": "not_found"})
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            status, answer = fake.token(body)
            self._answer(status, {}, answer)

    return Handler
