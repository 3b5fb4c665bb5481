"""The real agent CLIs, unmodified, fix a failing test through ``hal run`` in a bwrap sandbox.

Every CLI talks to the scripted LLM server (``tests/llm_server``) on 127.0.0.1, configured the
way a user would point it at a real API: ``[agents.<name>]`` ``base_url``, ``model`` and
``api_key_env`` naming a host variable that holds a dummy key. Nothing else differs from a
real run, so the same presets work against the real endpoints with only those changed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import HalCli, files_containing, git, requires_cli
from tests.llm_server.script import Script, Turn
from tests.llm_server.scripts import CALC_BUG, PROMPT, fix_bug_script
from tests.llm_server.server import RecordedRequest, ScriptedLLMServer
from tests.support.real_agents import AGENTS, RealAgent, point_at_server

from hal9999.providers.bwrap.args import WORKDIR

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]


def auth_of(request: RecordedRequest, spec: RealAgent) -> str:
    """The key a request carried, without the ``Bearer`` prefix."""
    return request.headers.get(spec.auth_header, "").removeprefix("Bearer ")


def model_of(request: RecordedRequest) -> str:
    """The model a request asked for: in the body, or (Gemini) in the path."""
    if "model" in request.body:
        return str(request.body["model"])
    return request.path.rpartition("/")[2].partition(":")[0]


def task_of(hal: HalCli) -> dict[str, Any]:
    """The one task in the private HAL_HOME."""
    out = hal("task", "list", "--json")
    assert out.returncode == 0, out.stderr
    [task] = json.loads(out.stdout)
    shown = hal("task", "show", task["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    data: dict[str, Any] = json.loads(shown.stdout)
    return data


def events_of(hal: HalCli, task_id: str) -> list[dict[str, Any]]:
    """``hal task events --json`` parsed."""
    out = hal("task", "events", task_id, "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def assert_fixed_on_branch(repo: Path, branch: str, tmp_path: Path) -> None:
    """The fix is on ``branch`` in the source repo and the repo's test passes there."""
    assert CALC_BUG.new in git(repo, "show", f"{branch}:{CALC_BUG.file}")
    assert CALC_BUG.old in (repo / CALC_BUG.file).read_text(), "main must be untouched"
    checkout = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", "--branch", branch, str(repo), str(checkout)], check=True)
    test = CALC_BUG.test_command.split()
    assert subprocess.run(test, cwd=checkout, capture_output=True).returncode == 0
    before = subprocess.run(test, cwd=repo, capture_output=True)
    assert before.returncode != 0, "the test must fail without the fix"


def assert_key_nowhere(hal: HalCli, key: str, *outputs: str) -> None:
    """The canary: the key is in no file under HAL_HOME (db, events, log, agent home) or output."""
    assert files_containing(hal.home, key.encode()) == []
    for text in outputs:
        assert key not in text


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_real_agent_fixes_the_failing_test(
    agent: str,
    hal_cli: HalCli,
    llm_server: ScriptedLLMServer,
    bug_repo: Path,
    dummy_key: str,
    tmp_path: Path,
) -> None:
    requires_cli(agent)
    spec = point_at_server(hal_cli, llm_server, agent)
    out = hal_cli("run", "--agent", agent, "--provider", "bwrap", PROMPT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    task = task_of(hal_cli)
    assert task["status"] == "succeeded" and task["exit_code"] == 0
    assert task["branch"] == f"hal/{task['id']}"
    assert task["files_changed"] == 1, "only the fix: no agent caches or state in the branch"
    assert_fixed_on_branch(bug_repo, task["branch"], tmp_path)

    events = events_of(hal_cli, task["id"])
    calls = {e["name"] for e in events if e["type"] == "tool_call"}
    assert spec.tools <= calls, calls
    usage = [e for e in events if e["type"] == "usage"]
    assert usage and all(u["input_tokens"] > 0 and u["output_tokens"] > 0 for u in usage)
    assert task["input_tokens"] > 0 and task["output_tokens"] > 0
    # The gateway measured every model call itself (network "none": it is the only way out).
    measured = [u for u in usage if u["source"] == "gateway"]
    assert len(measured) >= len(llm_server.requests.model_calls())
    assert all(u["status"] == 200 and u["model"] == spec.model for u in measured)
    assert task["input_tokens"] >= sum(u["input_tokens"] for u in measured) > 0
    if spec.reports_cost:
        assert all(u["cost_usd"] is not None for u in usage)
        assert task["cost_usd"] is not None
    if agent == "claude":
        # Claude Code prices any model it is given; the run's total arrives in `result`.
        assert task["cost_usd"] > 0 and any(u["total"] for u in usage)
    if agent != "aider":  # aider's plain-text output names no session
        assert task["agent_session_id"]
        assert any(e["type"] == "agent_session" for e in events)
    assert not [e for e in events if e["type"] == "message" and e["level"] != "info"]

    requests = llm_server.requests.all()
    assert llm_server.requests.model_calls(), "the agent never called the model"
    assert {f"{r.method} {r.path}" for r in requests} <= spec.paths
    assert all(r.status == 200 for r in requests)
    assert all(auth_of(r, spec) == dummy_key for r in requests if r.api)
    assert {model_of(r) for r in llm_server.requests.model_calls()} == {spec.model}

    events_text = hal_cli("task", "events", task["id"]).stdout
    logs_text = hal_cli("task", "logs", task["id"]).stdout
    assert_key_nowhere(hal_cli, dummy_key, out.stdout, out.stderr, events_text, logs_text)


def test_claude_resume_continues_its_own_session(
    hal_cli: HalCli, llm_server: ScriptedLLMServer, dummy_key: str
) -> None:
    requires_cli("claude")
    point_at_server(hal_cli, llm_server, "claude")
    first = hal_cli("run", "--agent", "claude", PROMPT)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    task = task_of(hal_cli)
    session_id = task["agent_session_id"]
    assert session_id
    first_run = llm_server.requests.model_calls()
    assert {r.headers.get("x-claude-code-session-id") for r in first_run} == {session_id}

    # The server is stateless: a resumed conversation carries the 4 earlier assistant turns,
    # so it is answered with the 5th.
    followup = "Check the fix once more, then say resumed."
    llm_server.script = Script(
        turns=[*fix_bug_script("claude", Path(WORKDIR)).turns, Turn.say("Resumed: all good.")],
        model=AGENTS["claude"].model,
    )
    again = hal_cli("task", "resume", task["id"], followup)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]

    resumed = llm_server.requests.model_calls()[len(first_run) :]
    assert resumed, "the resumed run made no model call"
    # Claude Code continued the same session: its id flows back in every request...
    assert {r.headers.get("x-claude-code-session-id") for r in resumed} == {session_id}
    # ...and the request holds the earlier conversation: first prompt, tool calls, new prompt.
    body = json.dumps(resumed[0].body["messages"])
    assert PROMPT in body and followup in body
    assert '"name": "Edit"' in body and CALC_BUG.new.strip() in body
    assert resumed[0].turn_index == 4

    task = task_of(hal_cli)
    assert task["status"] == "succeeded" and task["resumes"] == 1
    assert task["agent_session_id"] == session_id
    texts = [e["text"] for e in events_of(hal_cli, task["id"]) if e["type"] == "agent_text"]
    assert texts[-1] == "Resumed: all good."
    assert_key_nowhere(hal_cli, dummy_key, first.stdout, first.stderr, again.stdout, again.stderr)
