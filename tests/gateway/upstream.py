"""A small Anthropic-style upstream for gateway tests: counts concurrency, can open with a
429 storm, answers JSON or SSE with usage, and records what it was sent."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes.vendor_api import SHUTDOWN_POLL_S


@dataclass
class Seen:
    """One request the upstream received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class StormUpstream:
    """Answers the first ``fail_first`` calls with 429 and ``retry-after``, then succeeds."""

    fail_first: int = 0
    retry_after: str = "1"
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    refused: int = 0
    active: int = 0
    peak: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this context (a self-signed certificate in the TLS test)."""
    set_cookie: str | None = None
    """A ``set-cookie`` header sent with every JSON answer (the cookie-jar test)."""
    gate: threading.Event | None = None
    """Hold every call (before its answer) until this is set."""
    texts: int = 0
    """Text events a stream sends between its start and its usage (``message_delta``)."""
    echo_key: bool = False
    """Echo the ``x-api-key`` it was sent: a JSON answer is a 401 naming it in its body and
    a header, a stream carries it split across two writes."""

    @property
    def url(self) -> str:
        """Base URL (Anthropic style: no /v1)."""
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StormUpstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw or b"{}")
                with upstream._lock:
                    upstream.active += 1
                    upstream.peak = max(upstream.peak, upstream.active)
                    storm = upstream.refused < upstream.fail_first
                    if storm:
                        upstream.refused += 1
                    else:
                        headers = {k.lower(): v for k, v in self.headers.items()}
                        upstream.seen.append(Seen(self.path, headers, body))
                try:
                    if storm:
                        self._send(
                            429,
                            {"type": "error", "error": {"type": "rate_limit_error"}},
                            {"retry-after": upstream.retry_after},
                        )
                        return
                    if upstream.gate is not None:
                        upstream.gate.wait(120)
                    time.sleep(upstream.delay_s)
                    echoed = self.headers.get("x-api-key", "") if upstream.echo_key else ""
                    if body.get("stream"):
                        self._stream(body, echoed)
                    elif echoed:
                        error = {"type": "authentication_error",
                                 "message": f"invalid x-api-key {echoed}"}  # fmt: skip
                        self._send(401, {"type": "error", "error": error}, {"x-echo": echoed})
                    else:
                        cookie = upstream.set_cookie
                        self._send(200, _message(body), {"set-cookie": cookie} if cookie else None)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway aborted the call (a test of exactly that)
                finally:
                    with upstream._lock:
                        upstream.active -= 1

            def _send(
                self, status: int, data: dict[str, Any], extra: dict[str, str] | None = None
            ) -> None:
                out = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(out)

            def _stream(self, body: dict[str, Any], echoed: str = "") -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                message = _message(body)
                start = {
                    "type": "message_start",
                    "message": {
                        **message,
                        "content": [],
                        "usage": {
                            "input_tokens": 11,
                            "output_tokens": 1,
                            "cache_read_input_tokens": 5,
                        },
                    },
                }
                text = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}}
                events = [start, *[text] * upstream.texts]
                for event in (*events, {"type": "message_delta", "usage": {"output_tokens": 7}}):
                    self.wfile.write(
                        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                    )
                    self.wfile.flush()
                    time.sleep(upstream.delay_s)
                    if echoed:  # the second write reaches the gateway apart from the first
                        half = len(echoed) // 2
                        self.wfile.write(f"event: ping\ndata: {echoed[:half]}".encode())
                        self.wfile.flush()
                        time.sleep(0.05)
                        self.wfile.write(f"{echoed[half:]}\n\n".encode())
                        self.wfile.flush()
                        echoed = ""

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    """A real server's listen backlog. socketserver's 5 let a burst of the gateway's calls
    (64 held at once) overflow it while the accepting thread waited for a CPU: their SYNs
    were dropped and resent after 1, 3, 7... s, so calls the test held were answered a
    minute or more late, or failed (CI: fewer than 64 of 64 answered)."""


def _message(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 5},
    }
