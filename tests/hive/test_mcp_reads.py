"""A request line is counted in the daemon while it is read: connections sending long lines
with no newline hold a bounded part of the daemon, per agent and in all, and others go on.

Each connection used to buffer up to a whole line (4 MiB) before it was read: an agent's 8
connections held 32 MiB, and the daemon's 4,096 connections 16 GiB, however slowly they
were sent. What is counted here is what the daemon took off sockets it still holds open
(what hostile senders got rid of), not the daemon's own figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path

from tests.hive.mcp_client import INIT, READY, connect, tool_call

from hal9999.hive.mcp.budget import MAX_LINE, McpLimits
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Caller, NoArgs, Tool

SLACK = 1 << 20
"""What one connection may take besides the counted bytes: its stream's uncounted part
(at most 80 KiB) and the kernel's socket buffers (~200 KiB on each side)."""
LONG = b"x" * (MAX_LINE - 1)  # as long as a line may be, and never ended


class Sender:
    """A raw connection sending ``data`` (:data:`LONG`) as far as the daemon takes it."""

    def __init__(self, path: Path, data: bytes = LONG) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.data = data
        self.sent = 0
        self.open = True

    def push(self) -> int:
        """Send what the socket takes now; how many bytes that was."""
        before = self.sent
        while self.open and self.sent < len(self.data):
            try:
                self.sent += self.sock.send(self.data[self.sent : self.sent + (64 << 10)])
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                self.open = False
        return self.sent - before

    def answer(self) -> dict[str, object]:
        """The one line the daemon wrote before hanging up."""
        self.sock.setblocking(True)
        self.sock.settimeout(10)
        data = b""
        with contextlib.suppress(ConnectionResetError):  # it closed with our bytes unread
            while chunk := self.sock.recv(1 << 16):
                data += chunk
        [line] = data.splitlines()
        return dict(json.loads(line))


async def _stalled(senders: list[Sender]) -> int:
    """Push until no sender has moved a byte for 20 rounds; what the ones still open sent."""
    quiet = 0
    async with asyncio.timeout(60):
        while quiet < 20:
            moved = sum(s.push() for s in senders)
            quiet = 0 if moved else quiet + 1
            await asyncio.sleep(0.05)
    return sum(s.sent for s in senders if s.open)


def _refused(senders: list[Sender]) -> list[Sender]:
    """The senders hung up, each after one line saying which bound its line passed."""
    refused = [s for s in senders if not s.open]
    for sender in refused:
        error = sender.answer()["error"]
        assert isinstance(error, dict) and error["code"] == -32600
        assert "mcp_read_bytes_per_agent" in error["message"]
    return refused


async def _shut(hub: McpHub, senders: list[Sender]) -> None:
    for sender in senders:
        sender.sock.close()
    async with asyncio.timeout(10):  # their lines are dropped: nothing stays counted
        while hub.budget.reading.total or hub.budget.connections_total:
            await asyncio.sleep(0.05)


async def test_one_agents_long_lines_hold_its_bound_and_others_go_on(hub: McpHub) -> None:
    hub.budget = type(hub.budget)(McpLimits(read_bytes_per_agent=MAX_LINE))
    sock = await hub.serve("alpha")
    senders = [Sender(sock) for _ in range(4)]
    held = await _stalled(senders)
    # Before: each connection took its whole line, 16 MiB for the four, and stayed open.
    assert held <= MAX_LINE + 4 * SLACK, f"{held} bytes taken of lines never ended"
    assert hub.budget.reading.held["alpha"] <= MAX_LINE
    assert _refused(senders)
    async with connect(await hub.serve("beta")) as beta:  # another agent goes on
        assert (await beta.list_tools()).tools
    await _shut(hub, senders)


async def test_many_agents_long_lines_hold_the_daemons_bound(hub: McpHub) -> None:
    hub.budget = type(hub.budget)(McpLimits(read_bytes=MAX_LINE))
    senders = [Sender(await hub.serve(name)) for name in ("alpha", "beta", "gamma", "delta")]
    held = await _stalled(senders)
    assert held <= MAX_LINE + 4 * SLACK, f"{held} bytes taken of lines never ended"
    assert hub.budget.reading.total <= MAX_LINE
    assert _refused(senders)
    async with connect(await hub.serve("omega")) as omega:  # short lines are never refused
        assert (await omega.list_tools()).tools
    await _shut(hub, senders)


async def test_lines_sent_while_requests_are_in_flight_wait_in_the_socket(
    hub: McpHub,
) -> None:
    # A connection with 16 requests in flight is not read, but its stream took what came
    # until it held twice its limit: 8 MiB of pipelined lines waited in the daemon.
    release = asyncio.Event()

    async def held(caller: Caller, args: NoArgs) -> str:
        await release.wait()
        return "done"

    hub.extra_tools.append(Tool("held", "Answer once released.", NoArgs, held))
    calls = [INIT, READY, *(tool_call(i, "held", {}) for i in range(2, 18))]
    prelude = "".join(json.dumps(m) + "\n" for m in calls).encode()
    pings = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % i for i in range(10**5))
    sender = Sender(await hub.serve("alpha"), prelude + pings)
    sent = await _stalled([sender])
    assert len(prelude) < sent <= len(prelude) + SLACK, f"{sent - len(prelude)} bytes waited"
    release.set()
    sender.sock.close()
