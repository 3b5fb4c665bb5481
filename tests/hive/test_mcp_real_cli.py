"""Real agent CLIs, in a bwrap sandbox with no network, call hal's tools over MCP: the
preset wiring, the bound socket, the forwarder run by the sandbox's own python3, and the
call attributed to the agent whose task it is (the scripted LLM server asks for the call).

The whole hive flow (a send waking the other agent, its answer reaching the first agent's
next turn) is in test_mcp_hive_e2e.py; this one needs only the runner and the hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.conftest import KEY_VAR, bug_repo, dummy_key, llm_server, requires_cli
from tests.llm_server.script import Script, Turn
from tests.llm_server.server import ScriptedLLMServer
from tests.processes import processes_under

from hal9999.app import local_service
from hal9999.config import load_config
from hal9999.gateway.channel import GatewayPaths, gateway_pid
from hal9999.hive import broker
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Hive
from hal9999.hive.store import AgentRecord, insert_agent, update_agent
from hal9999.store import Store
from hal9999.tasks.request import RunRequest
from hal9999.tasks.service import TaskService

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]

__all__ = ["bug_repo", "dummy_key", "llm_server"]  # fixtures used by name

MODELS = {
    "claude": ("claude-sonnet-4-5", False),
    "codex": ("gpt-4.1", True),
    "opencode": ("scripted-model", True),
    "gemini": ("gemini-2.5-pro", False),
}
"""The model each CLI is pointed at and whether its base URL is OpenAI style. Codex offers
an MCP server's tools directly (a ``namespace`` tool) for a model like gpt-4.1; for models
with tool search (gpt-5.5) it defers them behind ``tool_search``."""
AGENTS = [("alpha", "claude", "mcp__hal__send"), ("beta", "codex", "mcp__hal__send"),
          ("gamma", "opencode", "hal_send"), ("delta", "gemini", "mcp_hal_send")]  # fmt: skip
"""Agent name, its CLI, and the name the CLI gives hal's ``send`` tool."""
PEER = "omega"
"""The agent they all write to (a record only: it never runs)."""


@dataclass
class Hal:
    store: Store
    service: TaskService
    env: dict[str, str]
    repo: Path


@pytest.fixture
async def hal(
    tmp_path: Path, bug_repo: Path, dummy_key: str, llm_server: ScriptedLLMServer
) -> AsyncIterator[Hal]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env |= {
        "HAL_HOME": str(tmp_path / "halhome"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "HAL_PROVIDER": "bwrap",
        "HAL_NETWORK": "none",
        KEY_VAR: dummy_key,
    }
    config_file = tmp_path / "xdg" / "hal9999" / "config.toml"
    config_file.parent.mkdir(parents=True)
    lines = []
    for agent, (model, openai) in MODELS.items():
        base = llm_server.openai_base_url if openai else llm_server.base_url
        lines += [f"[agents.{agent}]", f"base_url = {json.dumps(base)}"]
        lines += [f"model = {json.dumps(model)}", f"api_key_env = {json.dumps(KEY_VAR)}"]
    config_file.write_text("\n".join(lines) + "\n")
    config = load_config(env, cwd=bug_repo)
    store = Store.open(config.home)
    now = time.time()
    for name, agent in [(n, a) for n, a, _ in AGENTS] + [(PEER, "claude")]:
        insert_agent(
            store, AgentRecord(name=name, agent=agent, provider="bwrap", repo=str(bug_repo),
                               created_at=now, updated_at=now),
        )  # fmt: skip
    hub = McpHub(Hive(store=store, home=config.home))
    await hub.sync()
    try:
        yield Hal(store, local_service(config, store, env), env, bug_repo)  # MCP wired
    finally:
        await hub.close_all()
        store.close()
        await stop_gateway(config.home)
    assert not gateways_of(config.home), "the home's LLM gateway outlived the test"


def gateways_of(home: Path) -> list[str]:
    """The command lines of the gateway processes serving ``home``."""
    return [line for line in processes_under(home) if "hal9999.gateway" in line]


async def stop_gateway(home: Path) -> None:
    """End the gateway the runs started for ``home``. It is no child of this process (it
    detaches) and would wait out its idle time (600 s: the service's ``env`` reaches the
    runs, not the gateway, which inherits this process's environment)."""
    pid = await gateway_pid(GatewayPaths(home))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not gateways_of(home):
            return
        await asyncio.sleep(0.05)


async def held_grants(home: Path) -> int:
    """How many grants (keys) the gateway of ``home`` holds."""
    reader, writer = await asyncio.open_unix_connection(str(GatewayPaths(home).control))
    writer.write(b'{"op": "stats"}\n')
    answer = json.loads(await reader.readline())
    writer.close()
    return int(answer["grants"])


async def run_as(hal: Hal, name: str, agent: str, prompt: str) -> str:
    """Run ``prompt`` as agent ``name``'s long-lived task; returns the task id."""
    request = RunRequest(
        prompt=prompt, repo=str(hal.repo), ref=None, agent=agent, provider="bwrap",
        process_manager="tmux", timeout_s=150, cwd=hal.repo,
    )  # fmt: skip
    task = await hal.service.create(request)
    update_agent(hal.store, name, task_id=task.id)
    record = await hal.service.run(task.id)
    assert record.status == "succeeded", (record.status, record.error_message)
    return task.id


def tool_events(hal: Hal, task_id: str) -> list[dict[str, object]]:
    from hal9999.tasks.session import Session

    path = Session(Path(hal.store.get_task(task_id).session_dir)).events
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e["type"] in ("tool_call", "tool_result")]


@pytest.mark.parametrize(("name", "agent", "tool"), AGENTS)
async def test_a_real_cli_calls_send_as_its_own_agent(
    hal: Hal, llm_server: ScriptedLLMServer, name: str, agent: str, tool: str
) -> None:
    requires_cli(agent)
    peer = PEER
    llm_server.script = Script(
        turns=[Turn.call(tool, to=peer, body="what is 6*7?"), Turn.say("asked")],
        model=MODELS[agent][0],
    )
    task_id = await run_as(hal, name, agent, "ask your peer")
    assert [(m.sender, m.body) for m in broker.inbox(hal.store, peer)] == [(name, "what is 6*7?")]
    events = tool_events(hal, task_id)
    results = [e for e in events if e["type"] == "tool_result"]
    assert results and not any(e["is_error"] for e in results), events
    # The CLI saw hal's answer (the message id) as the tool's result.
    [sent] = broker.inbox(hal.store, peer)
    assert any(sent.id in str(e.get("output")) for e in results), results
    # The run's end withdrew its grant: the gateway left running holds no key.
    assert await held_grants(hal.service.config.home) == 0
