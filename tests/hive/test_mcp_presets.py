"""Each preset wires hal's MCP server into its CLI's own config when the run is a hive
agent's (``AgentContext.mcp``), and changes nothing otherwise."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest

from hal9999.agents.base import AgentContext, AgentSettings
from hal9999.agents.claude import ClaudeCodeAgent
from hal9999.agents.codex import CodexAgent
from hal9999.agents.gemini import GeminiAgent
from hal9999.agents.opencode import OpencodeAgent
from hal9999.hive.mcp.channel import (
    CHANNEL_TARGET,
    LAUNCH,
    McpPaths,
    McpRoute,
    attach,
    route_for,
)

SERVER = McpRoute(McpPaths(Path("/nonexistent")), "alpha").server()
FORWARD = ["-c", LAUNCH, CHANNEL_TARGET, f"{CHANNEL_TARGET}/mcp.sock"]


def ctx(*, mcp: bool = True, settings: AgentSettings | None = None) -> AgentContext:
    return AgentContext(
        task_id="t1",
        prompt="hi",
        prompt_file="/hal/prompt.txt",
        workspace="/workspace",
        home="/home/hal",
        resume_session="sess-1",
        settings=settings or AgentSettings(),
        mcp=SERVER if mcp else None,
    )


def argv(launch: object) -> list[str]:
    return list(launch.command.argv[4:])  # type: ignore[attr-defined]


def test_the_server_is_the_forwarder_to_the_bound_socket() -> None:
    assert SERVER.name == "hal" and SERVER.command == "sh"
    assert "python3 -I -S" in LAUNCH and 'perl "$0/forwarder.pl"' in LAUNCH
    assert list(SERVER.args) == FORWARD


def test_claude_gets_strict_mcp_config_and_the_server_allowed() -> None:
    launch = ClaudeCodeAgent().build(ctx())
    args = argv(launch)
    assert "--mcp-config=/home/hal/.hal/mcp.json" in args
    assert "--strict-mcp-config" in args and "--allowedTools=mcp__hal" in args
    # Both options are variadic in claude's parser: the '=' form keeps --resume its own.
    assert args[args.index("--resume") + 1] == "sess-1"
    config = json.loads(launch.files["/home/hal/.hal/mcp.json"])
    assert config == {
        "mcpServers": {"hal": {"type": "stdio", "command": "sh", "args": FORWARD, "env": {}}}
    }
    assert launch.env["MCP_TOOL_TIMEOUT"] == "60000"
    assert launch.env["ENABLE_TOOL_SEARCH"] == "false"  # else the tools hide behind a search
    plain = ClaudeCodeAgent().build(ctx(mcp=False))
    assert not any("mcp" in a for a in argv(plain)) and not plain.files


def test_codex_gets_an_mcp_servers_table() -> None:
    settings = AgentSettings(base_url="http://127.0.0.1:9/v1", api_key_env="KEY")
    launch = CodexAgent().build(ctx(settings=settings))
    config = tomllib.loads(launch.files["/home/hal/.codex/config.toml"].decode())
    assert config["mcp_servers"]["hal"] == {
        "command": "sh",
        "args": FORWARD,
        "startup_timeout_sec": 20,
        "tool_timeout_sec": 60,
    }
    assert config["model_provider"] == "hal"  # the rest of the config is still there
    plain = CodexAgent().build(ctx(mcp=False, settings=settings))
    assert "mcp_servers" not in tomllib.loads(plain.files["/home/hal/.codex/config.toml"].decode())


def test_opencode_gets_a_local_mcp_entry() -> None:
    launch = OpencodeAgent().build(ctx())
    config = json.loads(launch.env["OPENCODE_CONFIG_CONTENT"])
    assert config["mcp"]["hal"] == {
        "type": "local",
        "command": ["sh", *FORWARD],
        "enabled": True,
        "timeout": 60000,
    }
    plain = OpencodeAgent().build(ctx(mcp=False))
    assert "mcp" not in json.loads(plain.env["OPENCODE_CONFIG_CONTENT"])


def test_gemini_gets_trusted_mcp_servers() -> None:
    launch = GeminiAgent().build(ctx())
    config = json.loads(launch.files["/home/hal/.gemini/settings.json"])
    assert config["mcpServers"]["hal"] == {
        "command": "sh",
        "args": FORWARD,
        "timeout": 60000,
        "trust": True,
    }
    assert config["telemetry"] == {"enabled": False}
    plain = GeminiAgent().build(ctx(mcp=False))
    assert "mcpServers" not in json.loads(plain.files["/home/hal/.gemini/settings.json"])


def test_route_is_found_only_for_a_marked_task_and_binds_that_agent_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "sessions" / "t1" / "run"
    assert route_for(tmp_path, run_dir) is None
    attach(run_dir, "alpha")
    route = route_for(tmp_path, run_dir)
    assert route is not None and route.agent == "alpha"
    bind = route.bind()
    assert bind.source == tmp_path / "hive" / "mcp" / "alpha"
    assert bind.target == CHANNEL_TARGET and bind.read_only
    assert (bind.source / "forwarder.py").is_file() and (bind.source / "forwarder.pl").is_file()


@pytest.mark.parametrize("name", ["../beta", "Alpha", "a/b", "", "x" * 33])
def test_a_marker_naming_no_agent_gives_no_route(tmp_path: Path, name: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mcp.json").write_text(json.dumps({"agent": name}))
    assert route_for(tmp_path, run_dir) is None
    with pytest.raises(ValueError, match="not an agent name"):
        attach(run_dir, name)


def test_an_agents_long_lived_task_gets_its_route_without_a_marker(tmp_path: Path) -> None:
    from hal9999.hive.store import AgentRecord, insert_agent, update_agent
    from hal9999.store import Store

    store = Store.open(tmp_path)
    now = time.time()
    for name in ("alpha", "beta"):
        insert_agent(
            store, AgentRecord(name=name, agent="claude", provider="bwrap", created_at=now,
                               updated_at=now)
        )  # fmt: skip
    update_agent(store, "beta", task_id="t-beta")
    run_dir = tmp_path / "sessions" / "t-beta" / "run"
    assert route_for(tmp_path, run_dir, store, "t-other") is None
    route = route_for(tmp_path, run_dir, store, "t-beta")
    assert route is not None and route.agent == "beta"
    store.close()


def test_a_run_loads_no_mcp_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, hal9999.tasks.runner, hal9999.hive.mcp.channel\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'mcp_types', 'anyio',"
        " 'starlette'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
