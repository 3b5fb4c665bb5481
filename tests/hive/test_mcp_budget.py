"""The daemon's MCP connections and unread answers are bounded per agent across all its
connections, and daemon-wide: an agent that never reads its answers holds a bounded part of
the daemon, and many agents together hold no more than the daemon's bound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.hive.mcp_client import INIT, READY, connect, tool_call

from hal9999.hive.mcp.budget import ANSWER_BYTES, MAX_LINE, McpLimits
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import MAX_ANSWER_CHARS, Caller, Hive, NoArgs, Tool
from hal9999.store import Store

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Counted:
    """A tool whose answer is as large as answers get, counting the answers it made."""

    def __init__(self) -> None:
        self.made = 0
        self.tool = Tool("big", "A large answer.", NoArgs, self.run)

    async def run(self, caller: Caller, args: NoArgs) -> str:
        self.made += 1
        return "x" * (MAX_ANSWER_CHARS - 16)  # past the socket's buffer: it waits in hal


@pytest.fixture
async def made(tmp_path: Path) -> AsyncIterator[tuple[Store, Path]]:
    store = Store.open(tmp_path / "home")
    yield store, tmp_path / "home"
    store.close()


async def _hub(made: tuple[Store, Path], counted: Counted, limits: McpLimits) -> McpHub:
    store, home = made
    return McpHub(Hive(store=store, home=home), extra_tools=[counted.tool], limits=limits)


async def _pipeline(sock: Path, calls: int) -> Conn:
    """A connection that sends its requests and reads none of the answers."""
    reader, writer = await asyncio.open_unix_connection(str(sock))  # buffers <= 128 KiB
    lines = [INIT, READY, *(tool_call(i, "big", {}) for i in range(2, calls + 2))]
    writer.write("".join(json.dumps(m) + "\n" for m in lines).encode())
    await writer.drain()
    return reader, writer


async def _settle(counted: Counted, expected: int) -> None:
    """Wait until ``expected`` answers were made, then a little more for any beyond."""
    async with asyncio.timeout(30):
        while counted.made < expected:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


async def _answers(conn: Conn) -> int:
    """Read a connection's answers to the end (after half-closing it); how many came."""
    reader, writer = conn
    writer.write_eof()
    got = 0
    async with asyncio.timeout(60):
        while chunk := await reader.read(1 << 16):
            got += chunk.count(b"\n")
    writer.close()
    return got


async def test_an_agent_that_reads_nothing_holds_a_bounded_part_across_its_connections(
    made: tuple[Store, Path],
) -> None:
    # Each connection bounded its own calls in flight (16), but not the agent's across its
    # 8 connections: 128 answers of ~1 MB waited for an agent that read none.
    counted = Counted()
    limits = McpLimits(answer_bytes_per_agent=2 * ANSWER_BYTES)
    hub = await _hub(made, counted, limits)
    try:
        sock = await hub.serve("alpha")
        conns = [await _pipeline(sock, 5) for _ in range(3)]
        await _settle(counted, 2)
        assert counted.made == 2, f"{counted.made} answers made for an agent reading none"
        assert hub.budget.held["alpha"] <= 2 * ANSWER_BYTES
        other = await hub.serve("beta")
        async with connect(other) as beta:  # another agent is not held up by alpha
            assert not (await beta.call_tool("big", {})).is_error
        got = await asyncio.gather(*map(_answers, conns))  # reading, alpha gets them all
        assert got == [6, 6, 6]  # initialize and 5 calls each
        assert hub.budget.held_total == 0
    finally:
        await hub.close_all()


async def test_many_agents_together_hold_no_more_than_the_daemons_bound(
    made: tuple[Store, Path],
) -> None:
    counted = Counted()
    hub = await _hub(made, counted, McpLimits(answer_bytes=3 * ANSWER_BYTES))
    try:
        socks = [await hub.serve(name) for name in ("alpha", "beta", "gamma", "delta")]
        conns = [await _pipeline(sock, 2) for sock in socks]
        await _settle(counted, 3)
        assert counted.made == 3, f"{counted.made} answers made for agents reading none"
        assert hub.budget.held_total <= 3 * ANSWER_BYTES
        got = await asyncio.gather(*map(_answers, conns))
        assert got == [3, 3, 3, 3]
        assert hub.budget.held_total == 0
    finally:
        await hub.close_all()


async def test_the_daemon_holds_a_bounded_number_of_connections(
    made: tuple[Store, Path],
) -> None:
    counted = Counted()
    hub = await _hub(made, counted, McpLimits(connections=2))
    try:
        alpha, beta, gamma = [await hub.serve(n) for n in ("alpha", "beta", "gamma")]
        held = [await asyncio.open_unix_connection(str(s)) for s in (alpha, beta)]
        async with asyncio.timeout(10):
            while hub.budget.connections_total < 2:
                await asyncio.sleep(0.05)
        reader, extra = await asyncio.open_unix_connection(str(gamma))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # hung up at once
        extra.close()
        for _, writer in held:
            writer.close()
            await writer.wait_closed()
        async with asyncio.timeout(10):
            while hub.budget.connections_total:
                await asyncio.sleep(0.05)
        async with connect(gamma) as client:  # the places free again
            assert (await client.list_tools()).tools
    finally:
        await hub.close_all()


def test_the_bounds_are_hive_settings_the_daemon_hands_to_its_hub(tmp_path: Path) -> None:
    from hal9999.config import HalConfig
    from hal9999.errors import ConfigError
    from hal9999.hivesettings import hive_settings
    from hal9999.server.daemon import Daemon
    from hal9999.server.mcp import hub_for

    bounds = {"mcp_connections_per_agent": 2, "mcp_connections": 5,
              "mcp_answer_bytes_per_agent": 3 << 20, "mcp_answer_bytes": 7 << 20,
              "mcp_read_bytes_per_agent": 5 << 20, "mcp_read_bytes": 9 << 20}  # fmt: skip
    daemon = Daemon(HalConfig(home=tmp_path / "home", hive=bounds), {})
    try:
        limits = McpLimits(2, 5, 3 << 20, 7 << 20, 5 << 20, 9 << 20)
        assert hub_for(daemon).budget.limits == limits
    finally:
        daemon.store.close()
    with pytest.raises(ConfigError):  # less than one answer: no request could ever be read
        hive_settings(HalConfig(home=tmp_path, hive={"mcp_answer_bytes": ANSWER_BYTES - 1}))
    with pytest.raises(ConfigError):  # less than one whole line: a long one never ends
        hive_settings(HalConfig(home=tmp_path, hive={"mcp_read_bytes": MAX_LINE - 1}))
