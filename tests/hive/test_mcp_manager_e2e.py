"""The manager over MCP with a real Claude Code, through ``hal serve`` (bwrap, no network):
``hal hive init`` makes the manager; an operator message wakes it and it calls
``request_spawn``; the operator approves from the CLI; the new agent exists and runs a turn;
the approval's result reaches the manager, whose next turn sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.e2e.conftest import requires_cli
from tests.hive import serve_helpers
from tests.hive.serve_helpers import (
    agent_of,
    claude_config,
    serve_offline,
    stop_daemon,
    turns_done,
)
from tests.hive.serve_helpers import poll_real_cli as poll
from tests.llm_server.script import Script, Turn
from tests.llm_server.server import ScriptedLLMServer
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(720)]

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal
llm = serve_helpers.llm  # a scripted LLM server


@pytest.fixture
def serve(hal: Hal, hal_env: dict[str, str], llm: ScriptedLLMServer) -> Iterator[Hal]:
    serve_offline(hal, hal_env, 'default_agent = "claude"\n' + claude_config(llm))
    yield hal
    stop_daemon(hal, ("manager", "helper"))


def test_the_managers_spawn_request_is_approved_and_the_new_agent_runs(
    serve: Hal, demo_repo: Path, llm: ScriptedLLMServer
) -> None:
    requires_cli("claude")
    hal = serve
    # The helper's own turn gets the first reply too, but request_spawn is not among its
    # tools, so the server answers it with the side reply ("ok") and its turn ends.
    llm.script = Script(
        turns=[
            Turn.call(
                "mcp__hal__request_spawn",
                name="helper",
                agent="claude",
                role="You help with the docs.",
            ),
            Turn.say("Asked the operator for a helper."),
            Turn.say("The helper is there."),
        ],
        model="claude-sonnet-4-5",
    )
    out = hal("hive", "init", "--agent", "claude", "--repo", str(demo_repo))
    assert out.returncode == 0, out.stderr
    assert hal("msg", "send", "manager", "We need a docs helper.").returncode == 0

    def pending_spawn() -> dict[str, object] | None:
        listed = hal("approvals", "list", "--json")
        found = [a for a in json.loads(listed.stdout) if a["kind"] == "spawn"]
        return found[0] if found else None

    proposal = poll("the manager's spawn request", pending_spawn)
    assert proposal["proposer"] == "manager"
    assert proposal["payload"] == {"name": "helper", "agent": "claude",  # type: ignore[index]
                                   "role": "You help with the docs."}  # fmt: skip
    approved = hal("approvals", "approve", str(proposal["id"]), "--reason", "go ahead")
    assert approved.returncode == 0, approved.stderr
    helper = agent_of(hal, "helper")
    assert (helper["agent"], helper["kind"]) == ("claude", "agent")

    assert hal("msg", "send", "helper", "Hello helper.").returncode == 0
    done = poll("the helper's first turn", lambda: turns_done(hal, "helper", 1))
    assert done["recent_turns"][0]["result"] == "ok"
    manager = poll("the manager's second turn", lambda: turns_done(hal, "manager", 2))
    assert manager["kind"] == "manager"
    last = [r for r in llm.requests.model_calls() if r.turn_index == 2]
    assert last and "go ahead" in json.dumps(last[-1].body["messages"])
