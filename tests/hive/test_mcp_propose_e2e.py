"""Proposals over MCP with a real Claude Code, through ``hal serve`` (bwrap, no network): the
agent's work lands on ``hal/agent/alpha``; it ``propose``s it; the operator denies with a
reason, which reaches the agent's next turn; it proposes again; the operator approves and
the merge lands on the target branch, the user's checkout untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.e2e.conftest import requires_cli
from tests.hive import serve_helpers
from tests.hive.serve_helpers import claude_config, serve_offline, stop_daemon, turns_done
from tests.hive.serve_helpers import poll_real_cli as poll
from tests.llm_server.script import Script, Turn
from tests.llm_server.server import ScriptedLLMServer
from tests.support.hal import Hal, git

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(900)]

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal

PROPOSE = Turn.call("mcp__hal__propose", kind="apply", summary="notes", target="release")


llm = serve_helpers.llm


@pytest.fixture
def serve(hal: Hal, hal_env: dict[str, str], llm: ScriptedLLMServer) -> Iterator[Hal]:
    serve_offline(hal, hal_env, claude_config(llm))
    yield hal
    stop_daemon(hal, ("alpha",))


def pending(hal: Hal) -> list[dict[str, object]]:
    listed = hal("approvals", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [a for a in json.loads(listed.stdout) if a["kind"] == "apply"]


def test_a_proposal_denied_with_a_reason_then_approved_lands(
    serve: Hal, demo_repo: Path, llm: ScriptedLLMServer
) -> None:
    requires_cli("claude")
    hal = serve
    git(demo_repo, "branch", "release")  # the target; the user has main checked out
    llm.script = Script(
        turns=[
            Turn.call("Write", file_path="/workspace/NOTES.md", content="# notes\n"),
            Turn.say("Wrote the notes."),
            PROPOSE,
            Turn.say("Proposed."),
            PROPOSE,  # after the denial
            Turn.say("Proposed again."),
            Turn.say("Merged, thanks."),
        ],
        model="claude-sonnet-4-5",
    )
    out = hal("agent", "spawn", "alpha", "--agent", "claude", "--repo", str(demo_repo))
    assert out.returncode == 0, out.stderr
    assert hal("msg", "send", "alpha", "Write the notes.").returncode == 0
    poll("the first turn", lambda: turns_done(hal, "alpha", 1))
    assert "NOTES.md" in git(demo_repo, "show", "--stat", "hal/agent/alpha")

    assert hal("msg", "send", "alpha", "Propose them for release.").returncode == 0
    [first] = poll("the first proposal", lambda: pending(hal))
    denied = hal("approvals", "deny", str(first["id"]), "--reason", "add a title first")
    assert denied.returncode == 0, denied.stderr

    second = poll(
        "the second proposal", lambda: [a for a in pending(hal) if a["id"] != first["id"]]
    )
    # The turn that proposed again was woken by the denial and saw its reason.
    proposing = [r for r in llm.requests.model_calls() if r.turn_index == 4]
    assert proposing and "add a title first" in json.dumps(proposing[-1].body["messages"])
    approved = hal("approvals", "approve", str(second[0]["id"]))
    assert approved.returncode == 0, approved.stderr

    assert git(demo_repo, "show", "release:NOTES.md") == "# notes"
    assert not (demo_repo / "NOTES.md").exists(), "the user's checkout is untouched"
    assert git(demo_repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    poll("the turn told of the merge", lambda: turns_done(hal, "alpha", 4))
