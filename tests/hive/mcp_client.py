"""Test helpers: a hub serving agents, and the SDK's own client reaching one through the
real forwarder (so every test also runs the in-sandbox path)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

FORWARDER = Path(__file__).parents[2] / "src" / "hal9999" / "hive" / "mcp" / "forwarder.py"


@contextlib.asynccontextmanager
async def connect(sock: Path) -> AsyncIterator[Client]:
    """An MCP client whose server command is the forwarder to ``sock``."""
    args = ["-I", "-S", str(FORWARDER), str(sock)]
    params = StdioServerParameters(command=sys.executable, args=args)
    async with Client(params) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> tuple[bool, Any]:
    """Call ``tool``; returns (is_error, the JSON result or the error line)."""
    result = await client.call_tool(tool, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    if result.is_error:
        return True, text
    return False, json.loads(text)
