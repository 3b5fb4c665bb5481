"""A hive agent on the real Claude Code CLI (scripted LLM server): an operator message wakes
it, it fixes the bug in its first turn, and the next message is a second turn that resumes
the same Claude session (``claude -p --resume``) over the same workspace."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import tests.e2e.conftest as e2e
from tests.e2e.conftest import HalCli, requires_cli
from tests.llm_server.script import Script, Turn
from tests.llm_server.scripts import CALC_BUG, PROMPT, fix_bug_script
from tests.llm_server.server import ScriptedLLMServer
from tests.support.real_agents import AGENTS, point_at_server

from hal9999.providers.bwrap.args import WORKDIR

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(300)]

# The end-to-end fixtures: hal with a private home, the scripted server, a dummy key.
bug_repo, llm_server, dummy_key, hal_cli = e2e.bug_repo, e2e.llm_server, e2e.dummy_key, e2e.hal_cli


def shown(hal: HalCli, name: str) -> dict[str, Any]:
    out = hal("agent", "show", name, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def turns_done(hal: HalCli, name: str, count: int, timeout: float = 150) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent = shown(hal, name)
        if agent["state"] == "sleeping" and len([t for t in agent["recent_turns"]
                                                 if t["result"]]) >= count:  # fmt: skip
            return agent
        time.sleep(0.5)
    agent = shown(hal, name)
    log = hal("agent", "logs", name).stdout[-3000:]
    events = hal("task", "events", str(agent["task_id"])).stdout[-3000:]
    pytest.fail(f"{name} did not finish {count} turn(s): {agent}\n{log}\n{events}")


def test_an_operator_message_wakes_a_claude_agent_and_its_next_turn_resumes_the_session(
    hal_cli: HalCli, llm_server: ScriptedLLMServer, bug_repo: Path
) -> None:
    requires_cli("claude")
    point_at_server(hal_cli, llm_server, "claude")
    started = hal_cli("serve", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        out = hal_cli("agent", "spawn", "fixer", "--agent", "claude", "--repo", str(bug_repo))
        assert out.returncode == 0, out.stderr
        assert hal_cli("msg", "send", "fixer", PROMPT).returncode == 0
        agent = turns_done(hal_cli, "fixer", 1)
        assert agent["recent_turns"][0]["result"] == "ok", hal_cli("agent", "logs", "fixer").stdout
        task = json.loads(hal_cli("task", "show", agent["task_id"], "--json").stdout)
        session_id = task["agent_session_id"]
        assert session_id
        first_run = llm_server.requests.model_calls()
        assert {r.headers.get("x-claude-code-session-id") for r in first_run} == {session_id}
        assert CALC_BUG.new in (Path(task["session_dir"]) / "workspace" / CALC_BUG.file).read_text()

        # The server is stateless: the resumed conversation carries the 4 earlier assistant
        # turns, so it is answered with the 5th.
        followup = "Check the fix once more, then say resumed."
        llm_server.script = Script(
            turns=[*fix_bug_script("claude", Path(WORKDIR)).turns, Turn.say("Resumed: all good.")],
            model=AGENTS["claude"].model,
        )
        assert hal_cli("msg", "send", "fixer", followup).returncode == 0
        agent = turns_done(hal_cli, "fixer", 2)
        assert [t["result"] for t in agent["recent_turns"]] == ["ok", "ok"]
        assert agent["task_id"] == task["id"], "one long-lived task"
        resumed = llm_server.requests.model_calls()[len(first_run) :]
        assert resumed, "the second turn made no model call"
        assert {r.headers.get("x-claude-code-session-id") for r in resumed} == {session_id}
        body = json.dumps(resumed[0].body["messages"])
        assert "mailbox of fixer" in body and followup in body and PROMPT in body
        assert resumed[0].turn_index == 4

        stats = json.loads(hal_cli("agent", "stats", "fixer", "--json").stdout)
        assert stats["turns"] == 2 and stats["results"] == {"ok": 2}
        # Exact figures from the gateway's rows of the turns, and the tools Claude called.
        last = stats["last"]
        assert last["usage_source"] == "gateway" and last["input_tokens"] > 0
        assert stats["input_tokens"] > 0 and stats["cost_usd"] is not None
        assert {"Read", "Edit", "Bash"} <= set(stats["tools"])
        assert stats["p95_ms"] >= stats["p50_ms"] > 0
    finally:
        hal_cli("agent", "stop", "fixer")
        hal_cli("serve", "--stop")
