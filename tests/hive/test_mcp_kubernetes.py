"""A hive agent on ``--provider kubernetes`` (the fake API server's pods) calls hal's MCP
tools with a real Claude Code: its MCP command names the agent's socket where the pod sees
it (the mirror under ``/hal``, carried to the daemon's socket over the exec stream), and
the call is attributed to it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.e2e.conftest import requires_cli
from tests.hive.serve_helpers import (
    as_json,
    claude_config,
    llm,
    serve_offline,
    stop_daemon,
    turns_done,
)
from tests.hive.serve_helpers import (
    poll_real_cli as poll,
)
from tests.llm_server.script import Script, Turn
from tests.llm_server.server import ScriptedLLMServer
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(600)]

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal
__all__ = ["llm"]


@pytest.fixture
def serve(
    hal: Hal, hal_env: dict[str, str], llm: ScriptedLLMServer, fake_k8s: object
) -> Iterator[Hal]:
    hal_env |= {k: v for k, v in os.environ.items() if k.startswith("HAL_K8S_")}
    serve_offline(hal, hal_env, claude_config(llm) + "[providers.kubernetes]\npoll_s = 0.05\n")
    yield hal
    stop_daemon(hal, ("alpha",))


def test_a_claude_agent_in_a_pod_sends_over_mcp_as_itself(
    serve: Hal, demo_repo: Path, llm: ScriptedLLMServer
) -> None:
    requires_cli("claude")
    hal = serve
    llm.script = Script(
        turns=[Turn.call("mcp__hal__send", to="operator", body="hello from a pod"),
               Turn.say("Sent.")],
        model="claude-sonnet-4-5",
    )  # fmt: skip
    out = hal("agent", "spawn", "alpha", "--agent", "claude", "--provider", "kubernetes",
              "--repo", str(demo_repo))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert hal("msg", "send", "alpha", "Say hello to the operator.").returncode == 0
    alpha = poll("alpha's turn", lambda: turns_done(hal, "alpha", 1))
    assert alpha["recent_turns"][0]["result"] == "ok", alpha
    assert as_json(hal, "task", "show", alpha["task_id"])["provider"] == "kubernetes"
    mail = as_json(hal, "msg", "inbox")
    assert [(m["sender"], m["body"]) for m in mail] == [("alpha", "hello from a pod")]
    # The tool's result reached the model as a result, not an error of the MCP command.
    second = llm.requests.model_calls()[1]
    results = [b for m in second.body["messages"] if isinstance(m["content"], list)
               for b in m["content"] if b.get("type") == "tool_result"]  # fmt: skip
    assert len(results) == 1 and not results[0].get("is_error"), results
    texts = [c["text"] for c in results[0]["content"] if c.get("type") == "text"]
    assert json.loads(texts[0])["to"] == "operator", texts
