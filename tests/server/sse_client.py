"""A small server-sent-events client for tests and benchmarks (httpx, streaming)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    """One dispatched event: its id, its event name (``message`` by default), its data."""

    id: str | None
    event: str
    data: str
    received: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


@dataclass
class Stream:
    """What a stream delivered so far."""

    events: list[SseEvent] = field(default_factory=list)
    pings: int = 0

    @property
    def last_id(self) -> str | None:
        """The last id seen (what a browser sends back as ``Last-Event-ID``)."""
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1] if ids else None

    def gseqs(self) -> list[int]:
        """The ids of the ordinary events (not ``resync``), in arrival order."""
        return [int(e.id) for e in self.events if e.event == "message" and e.id is not None]


async def read_events(response: httpx.Response, into: Stream) -> AsyncIterator[SseEvent]:
    """Parse the body of ``response`` as it arrives, recording into ``into``."""
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                event = SseEvent(event_id, name, "\n".join(data))
                into.events.append(event)
                yield event
            event_id, name, data = None, "message", []
        elif line.startswith(":"):
            into.pings += 1
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "id":
                event_id = value
            elif key == "event":
                name = value
            elif key == "data":
                data.append(value)
