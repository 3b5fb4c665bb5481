"""Test helpers: a hub serving agents, and the SDK's own client reaching one through the
real forwarder (so every test also runs the in-sandbox path)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from hal9999.hive.mcp.channel import LAUNCH

FORWARDER = Path(__file__).parents[2] / "src" / "hal9999" / "hive" / "mcp" / "forwarder.py"

# Raw JSON-RPC lines, for clients that write them themselves (a shell agent, a script).
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "sh-agent", "version": "0"}}}  # fmt: skip
READY = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def tool_call(call_id: int, name: str, arguments: dict[str, object]) -> dict[str, object]:
    """A ``tools/call`` request line."""
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}}  # fmt: skip


@contextlib.asynccontextmanager
async def connect(
    sock: Path, *, path: str | None = None, target: str | None = None
) -> AsyncIterator[Client]:
    """An MCP client whose server command is the one the presets use (the launch script
    running a forwarder from the socket's directory) to ``sock`` (or to ``target``, e.g.
    ``tcp:127.0.0.1:PORT``); ``path`` replaces PATH."""
    args = ["-c", LAUNCH, str(sock.parent), target or str(sock)]
    env = {"PATH": path} if path is not None else None
    params = StdioServerParameters(command="sh", args=args, env=env)
    async with Client(params) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> tuple[bool, Any]:
    """Call ``tool``; returns (is_error, the JSON result or the error line)."""
    result = await client.call_tool(tool, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    if result.is_error:
        return True, text
    return False, json.loads(text)
