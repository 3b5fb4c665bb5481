"""The per-agent scripts and command builders agree with what the real CLIs showed.

tests/agents/captured/<agent>/ holds a real run per agent (see its README): the tools the
CLI offered, the requests it made, and whether the bug got fixed. These tests keep scripts.py
and cli_runs.py consistent with those captures without running any CLI.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path

import pytest

from .cli_runs import COMMANDS, DUMMY_KEY, AgentSetup
from .scripts import CALC_BUG, PROMPT, SCRIPTS, fix_bug_script

CAPTURED = Path(__file__).resolve().parents[1] / "agents" / "captured"
AGENTS = sorted(SCRIPTS)


def setup_for(home: Path) -> AgentSetup:
    return AgentSetup("http://127.0.0.1:9", home, PROMPT, "scripted-model", ("calc.py",))


def test_every_scripted_agent_has_a_command_and_a_capture() -> None:
    assert set(SCRIPTS) == set(COMMANDS)
    for agent in AGENTS:
        assert (CAPTURED / agent / "run.json").is_file(), agent


@pytest.mark.parametrize("agent", AGENTS)
def test_captured_run_fixed_the_bug(agent: str) -> None:
    run = json.loads((CAPTURED / agent / "run.json").read_text())
    assert run["exit_code"] == 0
    assert run["fixed"] and run["test_passed"]
    assert run["model_calls"] == len(fix_bug_script(agent, Path("/r")).turns)


@pytest.mark.parametrize("agent", AGENTS)
def test_script_calls_only_tools_the_cli_offered(agent: str) -> None:
    tools_file = CAPTURED / agent / "tools.json"
    offered = json.loads(tools_file.read_text()) if tools_file.exists() else {}
    for turn in fix_bug_script(agent, Path("/r")).turns:
        for call in turn.tool_calls:
            shape = offered[call.name]
            assert shape["kind"] == call.kind
            if isinstance(call.input, dict):
                assert set(shape["required"]) <= set(call.input) <= set(shape["properties"])


@pytest.mark.parametrize("agent", AGENTS)
def test_captured_requests_carried_the_dummy_key(agent: str) -> None:
    lines = (CAPTURED / agent / "requests.jsonl").read_text().splitlines()
    requests = [json.loads(line) for line in lines]
    assert requests and all(DUMMY_KEY in (r["auth"] or "") for r in requests)
    assert all(r["status"] == 200 for r in requests)


@pytest.mark.parametrize("agent", AGENTS)
def test_command_env_is_isolated(agent: str, tmp_path: Path) -> None:
    command = COMMANDS[agent](setup_for(tmp_path))
    assert command.env["HOME"] == str(tmp_path)
    assert all(str(tmp_path) in command.env[k] for k in command.env if k.startswith("XDG_"))
    assert command.env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert not set(command.env) - set(os.environ) - _ALLOWED_NEW[agent] - _BASE_KEYS
    assert PROMPT in command.argv


_BASE_KEYS = {"PATH", "HOME", "TERM", "LANG", "NO_COLOR"} | {
    f"XDG_{kind}_HOME" for kind in ("CONFIG", "DATA", "CACHE", "STATE")
}
_ALLOWED_NEW = {
    "claude": {
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "DISABLE_TELEMETRY",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "DISABLE_AUTOUPDATER",
        "IS_SANDBOX",
    },
    "codex": {"CODEX_HOME", "HAL_LLM_API_KEY"},
    "opencode": {"OPENCODE_CONFIG_CONTENT"}
    | {
        f"OPENCODE_DISABLE_{s}"
        for s in (
            "AUTOUPDATE",
            "MODELS_FETCH",
            "LSP_DOWNLOAD",
            "SHARE",
            "DEFAULT_PLUGINS",
            "CLAUDE_CODE",
        )
    },
    "aider": {"OPENAI_API_KEY", "LITELLM_LOCAL_MODEL_COST_MAP"},
    "gemini": {
        "GEMINI_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "GEMINI_TELEMETRY_ENABLED",
        "GEMINI_CLI_TRUST_WORKSPACE",
    },
}


def test_codex_config_points_at_the_server(tmp_path: Path) -> None:
    command = COMMANDS["codex"](setup_for(tmp_path))
    config = tomllib.loads((Path(command.env["CODEX_HOME"]) / "config.toml").read_text())
    provider = config["model_providers"][config["model_provider"]]
    assert provider["base_url"] == "http://127.0.0.1:9/v1"
    assert provider["wire_api"] == "responses"
    assert command.env[provider["env_key"]] == DUMMY_KEY
    assert config["analytics"]["enabled"] is False


def test_opencode_config_allows_tools_and_disables_sharing(tmp_path: Path) -> None:
    command = COMMANDS["opencode"](setup_for(tmp_path))
    config = json.loads(command.env["OPENCODE_CONFIG_CONTENT"])
    assert config["model"] == "hal/scripted-model"
    assert config["provider"]["hal"]["options"]["baseURL"] == "http://127.0.0.1:9/v1"
    assert set(config["permission"].values()) == {"allow"}
    assert (config["autoupdate"], config["share"]) == (False, "disabled")


def test_aider_price_cache_is_fresh_and_non_empty(tmp_path: Path) -> None:
    command = COMMANDS["aider"](setup_for(tmp_path))
    cache = tmp_path / ".aider" / "caches" / "model_prices_and_context_window.json"
    # aider refetches when the file is empty ({}) or older than a day.
    assert json.loads(cache.read_text())["openai/scripted-model"]["litellm_provider"] == "openai"
    assert time.time() - cache.stat().st_mtime < 60
    assert command.argv[-1] == "calc.py"
    assert command.argv[command.argv.index("--edit-format") + 1] == "diff"


def test_bug_fixture_round_trip(tmp_path: Path) -> None:
    CALC_BUG.write(tmp_path)
    assert not CALC_BUG.is_fixed(tmp_path)
    calc = tmp_path / "calc.py"
    calc.write_text(calc.read_text().replace(CALC_BUG.old, CALC_BUG.new))
    assert CALC_BUG.is_fixed(tmp_path)


def test_unknown_agent_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no bug-fix script for 'goose'"):
        fix_bug_script("goose", Path("/r"))
