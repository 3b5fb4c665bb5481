"""The MCP SDK (``mcp``, ``mcp_types``: ~1 s of CPU and ~320 modules at each ``hal serve``
start, about half of the daemon's imports) is loaded at the daemon's first MCP connection,
not at its start: most daemons never serve an agent. Counted, not timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.hive.mcp_client import INIT, READY, tool_call

SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path

import hal9999.server.daemon  # what `hal serve` imports...
from hal9999.hive.mcp.wiring import hub_for  # ...and at its start, for its hub
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Hive
from hal9999.store import Store


def sdk():
    return sorted(n for n in sys.modules if n.split(".")[0] in ("mcp", "mcp_types"))


async def main(home, lines):
    store = Store.open(home)
    hub = McpHub(Hive(store=store, home=home))
    sock = await hub.serve("alpha")
    served = sdk()
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(lines.encode())
    await writer.drain()
    answers = [json.loads(await reader.readline()) for _ in range(2)]
    writer.close()
    await hub.close_all()
    store.close()
    print(json.dumps({"served": served, "after": len(sdk()), "answers": answers}))


asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
"""


def test_a_daemons_hub_loads_the_sdk_at_its_first_connection_not_before(tmp_path: Path) -> None:
    lines = "".join(json.dumps(m) + "\n" for m in (INIT, READY, tool_call(2, "inbox", {})))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "home"), lines],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # Imported, a hub made and an agent's socket served: none of the SDK yet.
    assert found["served"] == []
    # The first connection loads it, and is served in full.
    assert found["after"] > 50
    init, inbox = found["answers"]
    assert init["id"] == 1 and init["result"]["serverInfo"]["name"] == "hal"
    assert inbox["id"] == 2 and inbox["result"]["isError"] is False
