"""What the daemon holds for agents' MCP connections, bounded per agent and daemon-wide.

An answer waits in the daemon until the agent reads it; each connection bounds its own
requests in flight, but an agent may hold several connections and a daemon serves many
agents. So the connections and the answers are also counted across connections: per agent,
so one agent cannot take what others need, and for the whole daemon, so many agents cannot
exhaust it together. A request read counts as the largest answer it may get
(:data:`ANSWER_BYTES`) until that answer has been written and drained to the agent's
socket; past a bound the connection reads no more of its requests until some answer of
the agent's (or, for the daemon's bound, of any agent's) has gone (back-pressure: the
agent waits, nothing it asked is lost), and a connection past a connection bound is
closed at once.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

ANSWER_BYTES = 1 << 20
"""What one request counts for until its answer is read: an answer is at most 512 Ki
characters of JSON (``tools.MAX_ANSWER_CHARS``), held as the tool's text, the SDK's model
and the encoded line, ~1 MB of the daemon's memory at the worst (measured: docs/hive.md)."""


class McpLimits(NamedTuple):
    """The bounds of ``[hive]`` (see :class:`~hal9999.hive.settings.HiveSettings`)."""

    connections_per_agent: int = 8
    connections: int = 4096
    answer_bytes_per_agent: int = 16 * ANSWER_BYTES
    answer_bytes: int = 2048 * ANSWER_BYTES


class McpBudget:
    """The daemon's count of MCP connections and unread answers, per agent and in all."""

    def __init__(self, limits: McpLimits | None = None) -> None:
        self.limits = limits or McpLimits()
        self.connections: dict[str, int] = {}
        self.connections_total = 0
        self.held: dict[str, int] = {}
        """Per agent: bytes counted for its requests whose answers have not gone yet."""
        self.held_total = 0
        self._freed = asyncio.Event()

    def connect(self, agent: str) -> bool:
        """Count a new connection of ``agent``; False (not counted) past a bound."""
        mine = self.connections.get(agent, 0)
        if mine >= self.limits.connections_per_agent:
            return False
        if self.connections_total >= self.limits.connections:
            return False
        self.connections[agent] = mine + 1
        self.connections_total += 1
        return True

    def disconnect(self, agent: str) -> None:
        """A connection counted by :meth:`connect` ended."""
        left = self.connections.get(agent, 0) - 1
        self.connections_total -= 1
        if left > 0:
            self.connections[agent] = left
        else:
            self.connections.pop(agent, None)

    def _fits(self, agent: str) -> bool:
        mine = self.held.get(agent, 0) + ANSWER_BYTES
        total = self.held_total + ANSWER_BYTES
        return mine <= self.limits.answer_bytes_per_agent and total <= self.limits.answer_bytes

    async def reserve(self, agent: str) -> None:
        """Count a request of ``agent``, once its answer fits both bounds (waits till then)."""
        while not self._fits(agent):
            self._freed.clear()
            await self._freed.wait()
        self.held[agent] = self.held.get(agent, 0) + ANSWER_BYTES
        self.held_total += ANSWER_BYTES

    def release(self, agent: str, requests: int = 1) -> None:
        """``requests`` of ``agent`` counted by :meth:`reserve` were answered (or dropped)."""
        if requests <= 0:
            return
        freed = min(requests * ANSWER_BYTES, self.held.get(agent, 0))
        left = self.held.get(agent, 0) - freed
        if left > 0:
            self.held[agent] = left
        else:
            self.held.pop(agent, None)
        self.held_total -= freed
        self._freed.set()
