"""The hive end to end with real agent CLIs over MCP, through a real ``hal serve``, bwrap and
no network (the scripted LLM server behind hal's gateway):

an operator message wakes ``alpha`` (Claude Code), which calls ``ask`` to ``beta``; the
question wakes ``beta`` (Codex), which calls ``answer``; the answer wakes ``alpha`` again and
its next turn (a resume of its own session) sees it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tests.cli.conftest as cli_fixtures
from tests.e2e.conftest import KEY_VAR, requires_cli
from tests.hive.serve_helpers import (
    claude_config,
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

from hal9999.hive.questions import list_questions
from hal9999.store import Store

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(720)]

demo_repo, hal_env, hal = cli_fixtures.demo_repo, cli_fixtures.hal_env, cli_fixtures.hal

QUESTION = "What is 6*7? Reply with the number."


@dataclass
class AnswerScript(Script):
    """Codex's turns: answer the open question asked to beta (its id is only known once
    asked), then say so."""

    home: Path = Path("/nonexistent")

    def turn_at(self, index: int) -> Turn:
        if index == 0:
            with Store.open(self.home) as store:
                [asked] = list_questions(store, target="beta")
            return Turn.call("mcp__hal__answer", id=asked.id, text="42")
        return Turn.say("answered")


@pytest.fixture
def servers() -> Iterator[tuple[ScriptedLLMServer, ScriptedLLMServer]]:
    with ScriptedLLMServer() as claude, ScriptedLLMServer() as codex:
        yield claude, codex


@pytest.fixture
def serve(
    hal: Hal, hal_env: dict[str, str], servers: tuple[ScriptedLLMServer, ScriptedLLMServer]
) -> Iterator[Hal]:
    claude, codex = servers
    codex_config = (f'[agents.codex]\nbase_url = "{codex.openai_base_url}"\nmodel = "gpt-4.1"\n'
                    f'api_key_env = "{KEY_VAR}"\n')  # fmt: skip
    serve_offline(hal, hal_env, claude_config(claude) + codex_config)
    yield hal
    stop_daemon(hal, ("alpha", "beta"))


def test_claude_asks_codex_over_mcp_and_its_next_turn_sees_the_answer(
    serve: Hal,
    hal_env: dict[str, str],
    demo_repo: Path,
    servers: tuple[ScriptedLLMServer, ScriptedLLMServer],
) -> None:
    requires_cli("claude")
    requires_cli("codex")
    hal, (claude, codex) = serve, servers
    claude.script = Script(
        turns=[
            Turn.call("mcp__hal__ask", question=QUESTION, to="beta"),
            Turn.say("Asked beta; waiting for the answer."),
            Turn.say("beta says 42."),
        ],
        model="claude-sonnet-4-5",
    )
    codex.script = AnswerScript(turns=[], model="gpt-4.1", home=Path(hal_env["HAL_HOME"]))
    for name, agent in (("alpha", "claude"), ("beta", "codex")):
        out = hal("agent", "spawn", name, "--agent", agent, "--repo", str(demo_repo))
        assert out.returncode == 0, out.stderr
    assert hal("msg", "send", "alpha", "Find out 6*7 from beta.").returncode == 0

    beta = poll("beta's turn", lambda: turns_done(hal, "beta", 1))
    alpha = poll("alpha's second turn", lambda: turns_done(hal, "alpha", 2))

    # alpha's first turn called ask over MCP; beta's codex called answer over MCP.
    with Store.open(Path(hal_env["HAL_HOME"])) as store:
        [asked] = list_questions(store, open_only=False)
    assert (asked.asker, asked.target, asked.question) == ("alpha", "beta", QUESTION)
    assert (asked.state, asked.answer, asked.answerer) == ("answered", "42", "beta")
    assert beta["recent_turns"][0]["result"] == "ok"
    # alpha's next turn resumed its own session and its prompt held beta's answer.
    last = claude.requests.model_calls()[-1]
    assert last.turn_index == 2, [r.turn_index for r in claude.requests.model_calls()]
    text = json.dumps(last.body["messages"])
    assert QUESTION in text and "42" in text and asked.id in text
    assert alpha["task_id"] is not None
    answered = [r for r in codex.requests.model_calls() if r.turn_index == 1]
    assert answered, "codex got the result of its answer call"
    assert "answered" in json.dumps(answered[0].body["input"])
