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

A request line is counted too while it is read: the part of a line past what a connection's
stream buffers uncounted (:data:`READ_CHUNK`) holds the daemon's memory until its newline
comes, and a line may be 4 MiB, so thousands of connections each sending a long line slowly
without one held gigabytes. A connection whose line would pass a bound of those bytes is
answered an error and hung up, its line dropped. Not waited for, as answers are: what frees
them is other connections' lines ending, which the agents sending them decide (an agent's
own connections, each part-way through a line, would wait on each other for ever, and a
connection waiting is not read, so its closing would go unseen).
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

ANSWER_BYTES = 1 << 20
"""What one request counts for until its answer is read: an answer is at most 512 Ki
characters of JSON (``tools.MAX_ANSWER_CHARS``), held as the tool's text, the SDK's model
and the encoded line, ~1 MB of the daemon's memory at the worst (measured: docs/hive.md)."""
MAX_LINE = 4 << 20
"""The longest JSON-RPC line a connection accepts (a message body is at most 64 KiB)."""
READ_CHUNK = 32 << 10
"""A connection's stream buffer: the part of a line read without counting it (a line of up
to this many bytes is never refused by the read bounds); the stream stops reading from the
socket past twice this."""


class McpLimits(NamedTuple):
    """The bounds of ``[hive]`` (see :class:`~hal9999.hivesettings.HiveSettings`)."""

    connections_per_agent: int = 8
    connections: int = 4096
    answer_bytes_per_agent: int = 16 * ANSWER_BYTES
    answer_bytes: int = 2048 * ANSWER_BYTES
    read_bytes_per_agent: int = 2 * MAX_LINE
    read_bytes: int = 64 * MAX_LINE


class Tally:
    """Bytes counted per agent and in all, each under a bound."""

    def __init__(self, per_agent: int, in_all: int) -> None:
        self.per_agent = per_agent
        self.in_all = in_all
        self.held: dict[str, int] = {}
        self.total = 0
        self._freed = asyncio.Event()

    def claim(self, agent: str, size: int) -> bool:
        """Count ``size`` bytes of ``agent``'s if they fit both bounds; whether they did."""
        if self.held.get(agent, 0) + size > self.per_agent or self.total + size > self.in_all:
            return False
        self.held[agent] = self.held.get(agent, 0) + size
        self.total += size
        return True

    async def take(self, agent: str, size: int) -> None:
        """Count ``size`` bytes of ``agent``'s, once they fit both bounds (waits till then)."""
        while not self.claim(agent, size):
            self._freed.clear()
            await self._freed.wait()

    def give(self, agent: str, size: int) -> None:
        """``size`` bytes of ``agent``'s counted by :meth:`take` are no longer held."""
        if size <= 0:
            return
        freed = min(size, self.held.get(agent, 0))
        left = self.held.get(agent, 0) - freed
        if left > 0:
            self.held[agent] = left
        else:
            self.held.pop(agent, None)
        self.total -= freed
        self._freed.set()


class McpBudget:
    """The daemon's count of MCP connections, unread answers and unended request lines,
    per agent and in all."""

    def __init__(self, limits: McpLimits | None = None) -> None:
        self.limits = limits = limits or McpLimits()
        self.connections: dict[str, int] = {}
        self.connections_total = 0
        self.answers = Tally(limits.answer_bytes_per_agent, limits.answer_bytes)
        """Bytes counted for requests whose answers have not gone yet."""
        self.reading = Tally(limits.read_bytes_per_agent, limits.read_bytes)
        """Bytes of request lines read past :data:`READ_CHUNK` whose newline has not come."""

    @property
    def held(self) -> dict[str, int]:
        """Per agent: bytes counted for its requests whose answers have not gone yet."""
        return self.answers.held

    @property
    def held_total(self) -> int:
        """The same, all agents together."""
        return self.answers.total

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

    async def reserve(self, agent: str) -> None:
        """Count a request of ``agent``, once its answer fits both bounds (waits till then)."""
        await self.answers.take(agent, ANSWER_BYTES)

    def release(self, agent: str, requests: int = 1) -> None:
        """``requests`` of ``agent`` counted by :meth:`reserve` were answered (or dropped)."""
        self.answers.give(agent, requests * ANSWER_BYTES)
