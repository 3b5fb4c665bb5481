"""The shape every wire format (Anthropic, Chat Completions, Responses) plugs into the server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from .script import Turn


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event; `event` None omits the `event:` line (OpenAI Chat style)."""

    data: dict[str, Any] | str
    event: str | None = None

    def encode(self) -> bytes:
        """The event as it goes on the wire, blank-line terminated."""
        payload = self.data if isinstance(self.data, str) else json.dumps(self.data)
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {payload}\n\n".encode()


@dataclass(frozen=True)
class Reply:
    """A whole JSON body, or a list of SSE events when `events` is set."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    events: list[SseEvent] | None = None


class WireFormat(Protocol):
    """How one API counts the turns a request carries and renders a scripted turn."""

    name: str
    """Short name recorded with each request: `anthropic`, `chat`, `responses`."""

    def count_turns(self, body: dict[str, Any], anchor: str | None) -> int | None:
        """How many assistant turns the request already carries (after `anchor` when set);
        None when `anchor` is set and the request does not carry it."""
        ...

    def offered_tools(self, body: dict[str, Any]) -> set[str] | None:
        """Names of the tools the request offers the model, or None when it sends none."""
        ...

    def render(self, body: dict[str, Any], turn: Turn, index: int, model: str) -> Reply:
        """The reply for `turn`; streams when the request asked for it."""
        ...
