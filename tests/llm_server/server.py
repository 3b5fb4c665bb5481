"""An in-process HTTP server on 127.0.0.1 that replays a Script in three LLM wire formats.

Routes (a `?query` is ignored for routing and kept in the log):

    HEAD|GET /                         200 (Claude Code probes the base URL)
    GET  /v1/models                    a one-model list in both OpenAI and Anthropic shape
    POST /v1/messages                  Anthropic Messages, JSON or SSE
    POST /v1/messages/count_tokens     Anthropic token count
    POST /v1/chat/completions          OpenAI Chat Completions, JSON or SSE
    POST /v1/responses                 OpenAI Responses, JSON or SSE
    POST /v1beta/models/M:generateContent         Gemini, JSON
    POST /v1beta/models/M:streamGenerateContent   Gemini, SSE (`?alt=sse`)
    POST /v1beta/models/M:countTokens             Gemini token count

The `/v1` prefix is optional, so a base URL with or without it works. Every request is
recorded in full, headers included: the auth header is kept (not redacted) so tests can assert
the dummy key arrived; only dummy keys ever reach this server.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .anthropic_messages import AnthropicMessages, count_tokens_reply
from .gemini_generate import GeminiGenerate
from .gemini_generate import count_tokens_reply as gemini_count_tokens_reply
from .openai_chat import OpenAIChat
from .openai_responses import OpenAIResponses
from .script import Script
from .wire import Reply, WireFormat

WIRE_FORMATS: dict[str, WireFormat] = {
    "/messages": AnthropicMessages(),
    "/chat/completions": OpenAIChat(),
    "/responses": OpenAIResponses(),
}
"""Path (without the /v1 prefix) to the wire format served there."""

GEMINI_METHODS: dict[str, WireFormat] = {
    "generateContent": GeminiGenerate(stream=False),
    "streamGenerateContent": GeminiGenerate(stream=True),
}
"""Gemini `models/MODEL:METHOD` method to the wire format serving it."""

GEMINI_PREFIX = "/v1beta/models/"


@dataclass
class RecordedRequest:
    """One request as the server saw it, and which turn it was answered with."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    """Header names lower-cased; the auth header is kept as sent."""
    body: Any
    api: str | None = None
    """`anthropic`, `chat`, `responses` or `gemini` for model calls; None for everything else."""
    turn_index: int | None = None
    """How many assistant turns the request carried (the index of the scripted reply)."""
    side: bool = False
    """True when answered with `Script.side_reply` (a request outside the conversation)."""
    status: int = 200


@dataclass
class RequestLog:
    """Thread-safe list of RecordedRequest with small query helpers."""

    _items: list[RecordedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, item: RecordedRequest) -> None:
        """Record one request."""
        with self._lock:
            self._items.append(item)

    def all(self) -> list[RecordedRequest]:
        """A snapshot of every request so far, oldest first."""
        with self._lock:
            return list(self._items)

    def model_calls(self, *, include_side: bool = False) -> list[RecordedRequest]:
        """Requests answered from the Script: conversation turns, optionally side requests;
        never those refused over `max_model_calls`."""
        return [r for r in self.all() if r.api and r.status == 200 and (include_side or not r.side)]

    def paths(self) -> list[str]:
        """`METHOD /path` for every request, in order."""
        return [f"{r.method} {r.path}" for r in self.all()]


def _strip_v1(path: str) -> str:
    return path[3:] if path.startswith("/v1/") else path


def _gemini_method(path: str) -> str | None:
    """`streamGenerateContent` for `/v1beta/models/M:streamGenerateContent`, else None."""
    if not path.startswith(GEMINI_PREFIX):
        return None
    _, colon, method = path[len(GEMINI_PREFIX) :].rpartition(":")
    return method if colon else None


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; the owning ScriptedLLMServer is reached through `self.server`."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; the RequestLog has everything."""

    def do_HEAD(self) -> None:
        """`HEAD /` and anything else: 200 with no body."""
        self._record(None, status=200)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        """`/` and `/v1/models`."""
        path = _strip_v1(urlsplit(self.path).path)
        if path in ("/", ""):
            self._record(None)
            self._send(Reply(body={"status": "ok"}))
        elif path == "/models":
            self._record(None)
            self._send(Reply(body=_models(self.server.llm.script.model)))
        else:
            self._not_found(None)

    def do_POST(self) -> None:
        """Model calls and token counts."""
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._record(raw.decode(errors="replace"), status=400)
            self._send(_error(400, "request body is not JSON"))
            return
        path = _strip_v1(urlsplit(self.path).path)
        if path == "/messages/count_tokens":
            self._record(body)
            self._send(count_tokens_reply(body))
            return
        gemini_method = _gemini_method(path)
        if gemini_method == "countTokens" and isinstance(body, dict):
            self._record(body)
            self._send(gemini_count_tokens_reply(body))
            return
        wire = GEMINI_METHODS.get(gemini_method or "") or WIRE_FORMATS.get(path)
        if wire is None or not isinstance(body, dict):
            self._not_found(body)
            return
        script = self.server.llm.script
        if len(self.server.llm.requests.model_calls(include_side=True)) >= script.max_model_calls:
            self._record(body, api=wire.name, status=400)
            self._send(_error(400, f"scripted server: over {script.max_model_calls} model calls"))
            return
        index = wire.count_turns(body, script.anchor)
        if index is None:
            turn, side = script.side_reply, True
        else:
            turn, side = script.select(index, wire.offered_tools(body))
        self._record(body, api=wire.name, turn_index=index, side=side)
        if script.latency_s:
            time.sleep(script.latency_s)
        self._send(wire.render(body, turn, index or 0, script.model))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while size := int(self.rfile.readline().strip().split(b";")[0], 16):
                raw += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        return raw

    def _record(self, body: Any, *, status: int = 200, **extra: Any) -> None:
        url = urlsplit(self.path)
        self.server.llm.requests.append(
            RecordedRequest(
                method=self.command,
                path=url.path,
                query=url.query,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                status=status,
                **extra,
            )
        )

    def _not_found(self, body: Any) -> None:
        self._record(body, status=404)
        self._send(_error(404, f"no route for {self.command} {self.path}"))

    def _send(self, reply: Reply) -> None:
        if reply.events is None:
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        # No length is known up front; closing the connection ends the stream.
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in reply.events:
            self.wfile.write(event.encode())
            self.wfile.flush()


def _error(status: int, message: str) -> Reply:
    kind = "not_found_error" if status == HTTPStatus.NOT_FOUND else "invalid_request_error"
    return Reply(
        status=status,
        body={"type": "error", "error": {"type": kind, "message": message}},
    )


def _models(model: str) -> dict[str, Any]:
    entry = {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "hal-test",
        "type": "model",
        "display_name": model,
        "created_at": "2024-01-01T00:00:00Z",
    }
    return {
        "object": "list",
        "data": [entry],
        "has_more": False,
        "first_id": model,
        "last_id": model,
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a real server's backlog (socketserver's 5 drops a burst's SYNs)
    llm: ScriptedLLMServer


class ScriptedLLMServer:
    """Serves a Script on 127.0.0.1 from a background thread; use as a context manager.

    The Script can be swapped between agent runs (`server.script = ...`); each request reads
    the current one.
    """

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1") -> None:
        self.script = script or Script(turns=[])
        self.requests = RequestLog()
        self._httpd = _HTTPServer((host, 0), _Handler)
        self._httpd.llm = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the OS picked."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` without a trailing slash or /v1 (ANTHROPIC_BASE_URL style)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1` (OpenAI SDK style)."""
        return f"{self.base_url}/v1"

    def start(self) -> ScriptedLLMServer:
        """Begin serving in a daemon thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
