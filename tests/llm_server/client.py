"""A minimal urllib client for the scripted server: JSON calls and SSE parsing, for tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HttpReply:
    """Status, headers (lower-cased names) and raw body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def events(self) -> list[SseMessage]:
        """The body parsed as a server-sent event stream."""
        return parse_sse(self.body)


@dataclass(frozen=True)
class SseMessage:
    """One parsed event: its `event:` name (or None) and its `data:` (JSON when it parses)."""

    event: str | None
    data: Any


def call(
    url: str,
    body: Any = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> HttpReply:
    """Send one request; HTTP errors come back as replies, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpReply(response.status, _lower(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, _lower(exc.headers.items()), exc.read())


def _lower(items: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def parse_sse(raw: bytes) -> list[SseMessage]:
    """Split a text/event-stream body into events; `data:` lines of one event are joined."""
    messages = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        event, lines = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                lines.append(value)
        text = "\n".join(lines)
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        messages.append(SseMessage(event, data))
    return messages
