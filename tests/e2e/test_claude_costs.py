"""Claude Code through hal's gateway on a model no price source knows (the scripted one, with
no ``[gateway.prices]`` entry): the task keeps the cost Claude Code reports itself rather
than none, and a cost budget's refusal names the model and the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import tests.e2e.conftest as e2e
from tests.e2e.conftest import HalCli, requires_cli
from tests.llm_server.scripts import PROMPT
from tests.llm_server.server import ScriptedLLMServer
from tests.support.real_agents import point_at_server

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]

bug_repo, llm_server, dummy_key, hal_cli = e2e.bug_repo, e2e.llm_server, e2e.dummy_key, e2e.hal_cli


UNPRICED = "claude-private-9"
"""A model name no price source knows."""


def unpriced_claude(hal: HalCli, server: ScriptedLLMServer) -> str:
    """Claude Code pointed at the scripted server, on a model no price source knows."""
    spec = point_at_server(hal, server, "claude")
    server.script.model = UNPRICED
    hal.configure("claude", base_url=server.base_url, model=UNPRICED, extra_args=spec.extra_args)
    config = hal.config_file.read_text()
    hal.config_file.write_text(re.sub(r"\[gateway\.prices\.[^\n]*\n[^\[]*", "", config))
    assert "gateway.prices" not in hal.config_file.read_text()
    return UNPRICED


def only_task(hal: HalCli) -> dict[str, Any]:
    [task] = json.loads(hal("task", "list", "--json").stdout)
    shown: dict[str, Any] = json.loads(hal("task", "show", task["id"], "--json").stdout)
    return shown


def test_the_cost_claude_reports_is_kept_when_hal_has_no_price(
    hal_cli: HalCli, llm_server: ScriptedLLMServer, bug_repo: Path
) -> None:
    requires_cli("claude")
    unpriced_claude(hal_cli, llm_server)
    out = hal_cli("run", "--agent", "claude", "--json", PROMPT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    task = only_task(hal_cli)
    events = hal_cli("task", "events", task["id"], "--json").stdout.splitlines()
    usage = [json.loads(line) for line in events if '"usage"' in line]
    gateway = [u for u in usage if u["source"] == "gateway"]
    assert gateway and all(u["cost_usd"] is None for u in gateway), "hal has no price"
    reported = [u["cost_usd"] for u in usage if u["source"] == "agent" and u["total"]]
    assert reported and reported[-1] > 0, usage
    assert task["cost_usd"] == pytest.approx(reported[-1])


def test_a_cost_budget_refusal_names_the_unpriced_model(
    hal_cli: HalCli, llm_server: ScriptedLLMServer, bug_repo: Path
) -> None:
    requires_cli("claude")
    model = unpriced_claude(hal_cli, llm_server)
    out = hal_cli("run", "--agent", "claude", "--max-cost", "1", "--json", PROMPT)
    assert out.returncode == 11, out.stdout[-3000:] + out.stderr[-3000:]
    error = json.loads(out.stdout.splitlines()[-1])["error"] if '"error"' in out.stdout else None
    task = only_task(hal_cli)
    assert task["error_code"] == "model_not_allowed", task
    assert f"refused model '{model}': it has no price" in task["error_message"], task
    assert f'[gateway.prices."{model}"]' in task["error_message"], task
    assert error is None or error["code"] == "model_not_allowed"
    assert llm_server.requests.model_calls() == []
