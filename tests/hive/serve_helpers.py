"""What the hive tests that drive a real ``hal serve`` through the CLI share
(test_hive_daemon, test_threads_daemon, test_mcp_*_e2e): waiting for a state the CLI shows,
an agent's record and its ended turns, the daemon's config file, a script agent committed to
the demo repository, a daemon answered by scripted LLM servers, and stopping it all."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import KEY_VAR
from tests.llm_server.server import ScriptedLLMServer
from tests.support.hal import Hal, env_of, git

REAL_CLI_S = 300.0
"""How long to wait for a turn that a real agent CLI takes (it starts its own runtime)."""


def poll(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """Call ``check`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def poll_real_cli(what: str, check: Callable[[], Any]) -> Any:
    """:func:`poll` for what waits on turns a real agent CLI takes."""
    return poll(what, check, timeout=REAL_CLI_S)


def as_json(hal: Hal, *args: str) -> Any:
    """``hal ARGS --json``, which must succeed, parsed."""
    out = hal(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def agent_of(hal: Hal, name: str) -> dict[str, Any]:
    """``hal agent show NAME``."""
    return as_json(hal, "agent", "show", name)  # type: ignore[no-any-return]


def agent_now(hal: Hal, name: str) -> dict[str, Any]:
    """The agent's record for a poll: what the running daemon of ``hal``'s home answers
    ``GET /v1/hive/agents/NAME`` (``hal agent show``'s document from the same store, and
    ``turn_running``), asked from this process, so a poll starts no ``hal`` (~0.3 s of CPU
    each, taken from the turn awaited on a 2-core CI host); ``hal agent show`` when no
    daemon answers."""
    from hal9999.errors import HalError
    from hal9999.server.client import DaemonClient

    env = env_of(hal)
    client = None if env is None else DaemonClient.find(env["HAL_HOME"])
    if client is not None:
        with contextlib.suppress(HalError):  # gone, or an error the CLI will show
            found: dict[str, Any] = client.request("GET", f"/v1/hive/agents/{name}")
            return found
    return agent_of(hal, name)


def turns_done(hal: Hal, name: str, count: int) -> dict[str, Any] | None:
    """The agent once ``count`` of its turns ended and it sleeps again, else None."""
    agent = agent_now(hal, name)
    ended = [t for t in agent["recent_turns"] if t["result"]]
    return agent if len(ended) >= count and agent["state"] == "sleeping" else None


def write_config(hal_env: dict[str, str], text: str) -> None:
    """Make ``text`` the user's config file of the CLI's environment."""
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def commit_agent(repo: Path, script: str) -> None:
    """Commit ``script`` as ``agent.sh`` (what a ``sh agent.sh`` preset runs) in ``repo``."""
    (repo / "agent.sh").write_text(script)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "hive agent")


def stop_daemon(hal: Hal, agents: Iterable[str] | None = None) -> None:
    """Stop ``agents`` (every agent listed, when None), then the daemon, which must stop."""
    names = [a["name"] for a in as_json(hal, "agent", "list")] if agents is None else agents
    for name in names:
        hal("agent", "stop", name)
    assert hal("serve", "--stop").returncode == 0


@pytest.fixture
def llm() -> Iterator[ScriptedLLMServer]:
    """A scripted LLM server (the tests set its ``script``)."""
    with ScriptedLLMServer() as server:
        yield server


def claude_config(llm: ScriptedLLMServer) -> str:
    """The config table that points Claude Code at ``llm``."""
    return (f'[agents.claude]\nbase_url = "{llm.base_url}"\nmodel = "claude-sonnet-4-5"\n'
            f'api_key_env = "{KEY_VAR}"\n')  # fmt: skip


def serve_offline(hal: Hal, hal_env: dict[str, str], config: str) -> None:
    """Start ``hal serve`` with ``config``, no network for the agents (their model calls
    go through hal's gateway to the scripted servers ``config`` names), a dummy key."""
    hal_env |= {"HAL_NETWORK": "none", "HAL_GATEWAY_IDLE_S": "2", KEY_VAR: "sk-hal-e2e-dummy"}
    write_config(hal_env, config)
    assert hal("serve", "--detach").returncode == 0
