"""From inside a bwrap sandbox: an agent reaches its own MCP socket through the forwarder
(python3 of the sandbox's /usr, network none), every call is its own, and another agent's
socket is neither visible nor reachable (a hostile probe tries)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hal9999.hive import broker
from hal9999.hive.mcp.channel import LAUNCH, McpPaths, McpRoute
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Hive
from hal9999.hive.store import AgentRecord, insert_agent
from hal9999.providers.bwrap.provider import BwrapProvider
from hal9999.spec import ArgvCommand, SandboxSpec
from hal9999.store import Store

pytestmark = pytest.mark.bwrap

PROBE = r"""
import json, os, socket, subprocess, sys
other, launch = sys.argv[1], sys.argv[2]
fwd = subprocess.Popen(["sh", "-c", launch, "/hal-mcp", "/hal-mcp/mcp.sock"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def rpc(message):
    fwd.stdin.write((json.dumps(message) + "\n").encode()); fwd.stdin.flush()
    return json.loads(fwd.stdout.readline()) if "id" in message else None
rpc({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion":
     "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}}})
rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
def call(i, name, args):
    reply = rpc({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                 "params": {"name": name, "arguments": args}})
    result = reply["result"]
    return [result.get("isError", False), result["content"][0]["text"]]
out = {"send": call(2, "send", {"to": "operator", "body": "hello from inside"}),
       # hostile: claim to be beta
       "forged": call(3, "send", {"to": "operator", "body": "forged", "sender": "beta"})}
reach = {}
for path in (other, "/hal-mcp/../beta/mcp.sock"):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path); reach[path] = "REACHED"
    except OSError as e:
        reach[path] = type(e).__name__
out["reach"] = reach
socks = []
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev", "/usr")]
    socks += [os.path.join(root, f) for f in files if f.endswith(".sock")]
out["sockets"] = sorted(socks)
print(json.dumps(out))
"""


@pytest.fixture
async def hive(tmp_path: Path) -> AsyncIterator[tuple[Store, McpHub]]:
    home = tmp_path / "home"
    store = Store.open(home)
    now = time.time()
    for name in ("alpha", "beta"):
        insert_agent(
            store,
            AgentRecord(
                name=name, agent="custom", provider="bwrap", created_at=now, updated_at=now
            ),
        )
    hub = McpHub(Hive(store=store, home=home))
    yield store, hub
    await hub.close_all()
    store.close()


async def test_a_sandbox_acts_only_as_its_own_agent(
    hive: tuple[Store, McpHub], tmp_path: Path
) -> None:
    store, hub = hive
    await hub.serve("alpha")
    beta_sock = await hub.serve("beta")
    route = McpRoute(McpPaths(tmp_path / "home"), "alpha")
    provider = BwrapProvider(state_dir=tmp_path / "home" / "sandboxes" / "bwrap")
    sandbox = await provider.create(SandboxSpec(network="none", binds=(route.bind(),)))
    try:
        result = await sandbox.exec(
            ArgvCommand(argv=("python3", "-I", "-S", "-c", PROBE, str(beta_sock), LAUNCH)),
            timeout=60,
        )
    finally:
        await provider.destroy(sandbox.id)
    assert result.exit_code == 0, result.stderr.decode()
    out = json.loads(result.stdout)
    assert out["send"][0] is False
    assert out["forged"] == [True, out["forged"][1]]
    assert out["forged"][1].startswith("bad arguments for send: sender: Extra inputs")
    # The message is alpha's: attribution is the socket, whatever the agent claims.
    got = [(m.sender, m.body) for m in broker.inbox(store, "operator")]
    assert got == [("alpha", "hello from inside")]
    assert set(out["reach"].values()) == {"FileNotFoundError"}, out["reach"]
    assert out["sockets"] == ["/hal-mcp/mcp.sock"]
