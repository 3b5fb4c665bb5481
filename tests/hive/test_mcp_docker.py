"""A hive agent on ``--provider docker`` (Podman) calls hal's MCP tools end to end: its
container (hal's image: no python) reaches its own socket through the bound channel and the
perl forwarder, the call is attributed to it, a forged sender is refused, and no other
agent's socket is visible or reachable from inside; kept warm, its second turn runs in the
same container and reaches its socket again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.hive.mcp_client import INIT, READY, tool_call
from tests.hive.serve_helpers import as_json, poll, turns_done
from tests.support.hal import Hal, events_of, git

from hal9999.hive.mcp.channel import LAUNCH

pytestmark = [pytest.mark.podman, pytest.mark.tmux, pytest.mark.timeout(300)]

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal

LINES = [INIT, READY, tool_call(2, "send", {"to": "operator", "body": "hello from a container"}),
         tool_call(3, "send", {"to": "operator", "body": "forged", "sender": "beta"})]  # fmt: skip

# The agent: shell only. It writes its JSON-RPC lines to the CLI's MCP command (LAUNCH, as
# the presets run it), keeps its stdin open until the last answer came, then looks around.
AGENT = r"""#!/bin/sh
cut -d' ' -f22 /proc/1/stat >> init-started.txt  # the container's init: a restart changes it
: > mcp-replies.txt
{ cat mcp-lines.txt
  i=0
  while [ $i -lt 300 ] && ! grep -q '"id": *3' mcp-replies.txt; do sleep 0.1; i=$((i+1)); done
} | sh -c "$(cat launch.txt)" /hal-mcp /hal-mcp/mcp.sock >> mcp-replies.txt 2> mcp-errors.txt
command -v python3 > python.txt || echo none > python.txt
ls -A /hal-mcp > mcp-dir.txt
find / \( -path /proc -o -path /sys -o -path /dev -o -path /usr \) -prune -o -name '*.sock' \
  -print 2>/dev/null | sort > sockets.txt
for path in "$(cat other.txt)" /hal-mcp/../beta/mcp.sock; do
  perl -MIO::Socket::UNIX -e 'print IO::Socket::UNIX->new(Type => 1, Peer => $ARGV[0])
    ? "REACHED\n" : "refused: $!\n"' "$path"
done > reach.txt
echo "turn done"
"""


@pytest.fixture
def serve(hal: Hal, hal_env: dict[str, str], demo_repo: Path) -> Iterator[Hal]:
    hal_env["HAL_DOCKER_URL"] = os.environ["HAL_DOCKER_URL"]  # set by the podman harness
    home = Path(hal_env["HAL_HOME"])
    (demo_repo / "agent.sh").write_text(AGENT)
    (demo_repo / "launch.txt").write_text(LAUNCH)
    (demo_repo / "mcp-lines.txt").write_text("".join(json.dumps(m) + "\n" for m in LINES))
    (demo_repo / "other.txt").write_text(str(home / "hive" / "mcp" / "beta" / "mcp.sock"))
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-qm", "a shell agent speaking MCP")
    assert hal("serve", "--detach").returncode == 0
    yield hal
    for agent in as_json(hal, "agent", "list"):
        hal("agent", "stop", agent["name"])
    assert hal("serve", "--stop").returncode == 0


def test_a_docker_agent_calls_an_mcp_tool_as_itself_only(
    serve: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    hal = serve
    for name in ("alice", "beta"):
        out = hal("agent", "spawn", name, "--agent", "sh agent.sh {{prompt_file}}",
                  "--provider", "docker", "--repo", str(demo_repo), "--keep-warm")  # fmt: skip
        assert out.returncode == 0, out.stderr
    home = Path(hal_env["HAL_HOME"])
    poll("beta's MCP socket", (home / "hive" / "mcp" / "beta" / "mcp.sock").exists)
    assert hal("msg", "send", "alice", "call your tools").returncode == 0
    agent = poll("alice's turn", lambda: turns_done(hal, "alice", 1), timeout=180)
    assert agent["recent_turns"][0]["result"] == "ok", agent
    assert as_json(hal, "task", "show", agent["task_id"])["provider"] == "docker"
    workspace = home / "sessions" / agent["task_id"] / "workspace"

    def read(name: str) -> str:
        return (workspace / name).read_text()

    assert read("python.txt").strip() == "none", "the image has no python: perl forwards"
    replies = {r["id"]: r for r in map(json.loads, read("mcp-replies.txt").splitlines())}
    assert set(replies) == {1, 2, 3}, read("mcp-replies.txt") + read("mcp-errors.txt")
    assert "result" in replies[2], replies[2]  # an error reply names its cause here
    assert not replies[2]["result"].get("isError"), replies[2]
    forged = replies[3]["result"]
    assert forged["isError"] is True
    assert forged["content"][0]["text"].startswith("bad arguments for send: sender: Extra")
    # Attribution is the socket: the operator's message is alice's, the forgery never sent.
    mail = as_json(hal, "msg", "inbox")
    assert [(m["sender"], m["body"]) for m in mail] == [("alice", "hello from a container")]
    # Inside: its own channel only; beta's socket is neither there nor reachable.
    assert read("mcp-dir.txt").split() == ["forwarder.pl", "forwarder.py", "mcp.sock"]
    assert read("sockets.txt").split() == ["/hal-mcp/mcp.sock"]
    reach = read("reach.txt").splitlines()
    assert len(reach) == 2 and all(line.startswith("refused: ") for line in reach), reach

    # Its second turn runs in the same container (kept warm), and MCP reaches it again.
    assert hal("msg", "send", "alice", "again").returncode == 0
    poll("alice's second turn", lambda: turns_done(hal, "alice", 2), timeout=180)
    acquired = [e for e in events_of(hal, agent["task_id"]) if e["type"] == "sandbox_acquired"]
    assert [e["warm"] for e in acquired] == [False, True]
    assert acquired[0]["sandbox_id"] == acquired[1]["sandbox_id"]
    first, second = read("init-started.txt").split()
    assert first == second, "the container was not restarted between the turns"
    mail = as_json(hal, "msg", "inbox")  # the first one was marked read when shown
    assert [(m["sender"], m["body"]) for m in mail] == [("alice", "hello from a container")]
