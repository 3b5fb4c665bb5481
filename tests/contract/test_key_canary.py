"""No real key in any sandbox, on every path: for each preset installable here, a hostile agent
looks for a canary key exported in the caller's shell (every process's environment and
command line in the sandbox, every file it can read), then calls the model through the
gateway with the placeholder it holds. The upstream must get exactly the canary, the sandbox
and the home none of it (``network = "none"``: the gateway is the only way out)."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.contract.conftest import TaskPath
from tests.e2e.conftest import files_containing, requires_cli
from tests.llm_server.script import Script, Turn
from tests.llm_server.server import ScriptedLLMServer
from tests.support.hal import git
from tests.support.ssh import ssh_config

# ssh_connections_closed: an in-process run on the ssh provider reaches its host from this
# test's event loop; its connections close with it.
pytestmark = [
    pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(300),
    pytest.mark.usefixtures("ssh_connections_closed"),
]  # fmt: skip

AGENT = Path(__file__).with_name("canary_agent.py")
BASH_AGENT = Path(__file__).with_name("canary_agent.sh")
"""The same hostile agent in bash, for the docker provider's image (no python)."""
KEY_VAR = "CANARY_LLM_KEY"
"""The caller's variable holding the canary (``api_key_env``): not the preset's own, so no
placeholder the launcher copies over it can hide it."""


@dataclass(frozen=True)
class Api:
    """How a preset's API is called: the base URL's path, the call, the key's header."""

    openai_base: bool
    path: str
    header: str
    body: dict[str, Any]
    model: str


CHAT = {"model": "scripted-model", "messages": [{"role": "user", "content": "hello"}]}
PRESETS: dict[str, Api] = {
    "claude": Api(False, "/v1/messages", "x-api-key", {
        "model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}]}, "claude-sonnet-4-5"),
    "codex": Api(True, "/v1/chat/completions", "authorization", CHAT, "scripted-model"),
    "opencode": Api(True, "/v1/chat/completions", "authorization", CHAT, "scripted-model"),
    "aider": Api(True, "/v1/chat/completions", "authorization", CHAT, "scripted-model"),
    "gemini": Api(False, "/v1beta/models/gemini-2.5-pro:generateContent", "x-goog-api-key",
                  {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]},
                  "gemini-2.5-pro"),
}  # fmt: skip
"""Every preset installable here (goose is not) and the call its hostile stand-in makes."""
SANDBOXES = [
    *[pytest.param(agent, "bwrap", id=agent) for agent in sorted(PRESETS)],
    *[
        pytest.param(agent, "docker", id=f"{agent}-docker", marks=[pytest.mark.podman])
        for agent in ("claude", "codex")
    ],
    pytest.param("codex", "ssh", id="codex-ssh", marks=[pytest.mark.ssh]),
    pytest.param("codex", "qemu", id="codex-qemu", marks=[pytest.mark.qemu]),
]
"""Every preset on bwrap; on docker (Podman) the preset that holds its key in its own
variable and one whose key is an OpenAI one; codex on an ssh host and in a microVM."""
BASH_ONLY = frozenset({"docker", "qemu"})
"""Providers whose image has no python: the hostile agent is :data:`BASH_AGENT`."""


def provider_config(provider: str, request: pytest.FixtureRequest) -> str:
    """The config file's table ``provider`` needs here (the path's home drops every HAL_*
    variable of the shell): the tests' sshd as the ssh host, the qemu test image."""
    if provider == "ssh":
        return ssh_config(request.getfixturevalue("sshd_server"))
    if provider == "qemu":
        from tests.qemu_image import images_dir

        return f"[providers.qemu]\nimages_dir = {json.dumps(str(images_dir()))}\n"
    return ""


@pytest.fixture
def llm_server() -> Any:
    """The scripted LLM server on 127.0.0.1."""
    with ScriptedLLMServer() as server:
        yield server


def canary_key() -> str:
    """A canary, unique per test: finding it anywhere means it leaked from this run."""
    return f"sk-hal-canary-{secrets.token_hex(12)}"


def plant_agent(repo: Path, api: Api) -> None:
    """The hostile agents and what they call, committed to the task's repo."""
    for agent in (AGENT, BASH_AGENT):
        shutil.copy(agent, repo / agent.name)
        (repo / agent.name).chmod(0o755)
    plan = {"path": api.path, "header": api.header, "body": api.body}
    (repo / "canary.json").write_text(json.dumps(plan))
    (repo / "canary.plan").write_text(f"{api.path}\n{api.header}\n{json.dumps(api.body)}\n")
    git(repo, "add", AGENT.name, BASH_AGENT.name, "canary.json", "canary.plan")
    git(repo, "commit", "-qm", "hostile agent")


def configure(
    path: TaskPath, agent: str, api: Api, server: ScriptedLLMServer, hostile: Path = AGENT
) -> None:
    """Point ``agent`` at the scripted server, its key in the caller's :data:`KEY_VAR`, the
    ``hostile`` agent in place of its CLI."""
    base_url = server.openai_base_url if api.openai_base else server.base_url
    path.config_file.write_text(
        f"[agents.{agent}]\n"
        f'command = "/workspace/{hostile.name}"\n'
        f"base_url = {json.dumps(base_url)}\n"
        f"model = {json.dumps(api.model)}\n"
        f"api_key_env = {json.dumps(KEY_VAR)}\n"
    )


def report_of(path: TaskPath, task_id: str, runs: int = 1) -> dict[str, Any]:
    """The hostile agent's findings in the last of the task's ``runs``, from its log."""
    logs = path.hal("task", "logs", task_id).stdout
    lines = [line for line in logs.splitlines() if line.startswith("CANARY ")]
    assert len(lines) == runs, logs[-3000:]
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("CANARY "))
    return report


def sent_key(header: str, value: str) -> str:
    """The key a request carried in ``header``."""
    return value.removeprefix("Bearer ") if header == "authorization" else value


@pytest.mark.parametrize(("agent", "provider"), SANDBOXES)
async def test_the_callers_key_reaches_the_upstream_and_no_sandbox(
    task_path: TaskPath,
    llm_server: ScriptedLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    agent: str,
    provider: str,
) -> None:
    requires_cli(agent)  # the preset checks its CLI is known; the stand-in runs in its place
    api = PRESETS[agent]
    canary = canary_key()
    plant_agent(task_path.repo, api)
    configure(task_path, agent, api, llm_server, BASH_AGENT if provider in BASH_ONLY else AGENT)
    with task_path.config_file.open("a") as config:
        config.write(provider_config(provider, request))
    llm_server.script = Script(turns=[Turn.say("hello")], model=api.model)
    monkeypatch.setenv(KEY_VAR, canary)  # the caller's shell only: never the daemon's

    request = task_path.request("find the key", agent=agent, provider=provider)
    task = await task_path.api.run(request)

    assert task.status == "succeeded", (task.status, task.error_message)
    report = report_of(task_path, task.id)
    assert report["proc_hits"] == [], f"{task_path.name}: the agent's processes hold the key"
    assert report["file_hits"] == [], f"{task_path.name}: files in the sandbox hold the key"
    assert report["files_seen"] > 10
    assert report["token_prefix"] == "hal-gw-", "the agent holds a placeholder, not a key"
    assert report["status"] == [200], report
    calls = llm_server.requests.all()
    assert calls, "the call reached the upstream"
    assert [sent_key(api.header, c.headers[api.header]) for c in calls] == [canary] * len(calls)
    assert files_containing(task_path.home, canary.encode()) == []


@pytest.mark.parametrize("agent", ["claude", "codex"])
async def test_a_variable_forwarded_with_the_key_gets_the_placeholder(
    task_path: TaskPath,
    llm_server: ScriptedLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    agent: str,
) -> None:
    # `hal run --env CANARY_LLM_KEY`: the user forwards the key variable by name, as a
    # gateway-less run would need. With the gateway on, the agent gets the placeholder there.
    requires_cli(agent)
    api = PRESETS[agent]
    canary = canary_key()
    plant_agent(task_path.repo, api)
    configure(task_path, agent, api, llm_server)
    llm_server.script = Script(turns=[Turn.say("hello")], model=api.model)
    monkeypatch.setenv(KEY_VAR, canary)
    monkeypatch.setenv("ALSO_THE_KEY", f"Bearer {canary}")  # the key inside another value

    request = task_path.request(
        "find the key", agent=agent, env_names=[KEY_VAR], secret_names=["ALSO_THE_KEY"]
    )
    task = await task_path.api.run(request)

    assert task.status == "succeeded", (task.status, task.error_message)
    report = report_of(task_path, task.id)
    assert report["proc_hits"] == [] and report["file_hits"] == [], task_path.name
    assert report["status"] == [200], report
    calls = llm_server.requests.all()
    assert [sent_key(api.header, c.headers[api.header]) for c in calls] == [canary] * len(calls)
    events = task_path.hal("task", "events", task.id, "--json").stdout
    warned = [
        json.loads(line)["text"]
        for line in events.splitlines()
        if '"warning"' in line and "upstream key" in line
    ]
    assert warned == [
        f"ALSO_THE_KEY, {KEY_VAR} held the LLM gateway's upstream key; the agent gets its "
        "placeholder token there instead (the key stays on the host)"
    ]
    assert files_containing(task_path.home, canary.encode()) == []


async def test_with_the_gateway_off_the_agent_holds_the_callers_key(
    task_path: TaskPath, llm_server: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `[gateway] enabled = false` is the documented way to hand the agent its key: the
    # served path still gets it from the caller (the keys field), as the local path does.
    requires_cli("claude")
    api = PRESETS["claude"]
    canary = canary_key()
    plant_agent(task_path.repo, api)
    configure(task_path, "claude", api, llm_server)
    with task_path.config_file.open("a") as config:
        config.write("[gateway]\nenabled = false\n")
    monkeypatch.setenv(KEY_VAR, canary)

    task = await task_path.api.run(task_path.request("find the key", agent="claude"))

    assert task.status == "succeeded", (task.status, task.error_message)
    report = report_of(task_path, task.id)
    assert report["proc_hits"] != [], "the agent going direct holds its key"
    assert report["token_prefix"] == "", "no gateway, no placeholder"
    assert report["status"] == [-1], "no network: the agent's own call reaches nothing"
    assert llm_server.requests.all() == []


@pytest.mark.parametrize("agent", ["codex"])
async def test_a_resume_keeps_the_key_out_of_the_sandbox(
    task_path: TaskPath,
    llm_server: ScriptedLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    agent: str,
) -> None:
    # A resume through the daemon sends the caller's key again (the daemon keeps none).
    requires_cli(agent)
    api = PRESETS[agent]
    canary = canary_key()
    plant_agent(task_path.repo, api)
    configure(task_path, agent, api, llm_server)
    llm_server.script = Script(turns=[Turn.say("hello"), Turn.say("again")], model=api.model)
    monkeypatch.setenv(KEY_VAR, canary)
    task = await task_path.api.run(task_path.request("find the key", agent=agent))
    assert task.status == "succeeded", (task.status, task.error_message)

    resumed = await task_path.api.resume(task.id, prompt="look again")

    assert resumed.status == "succeeded", (resumed.status, resumed.error_message)
    report = report_of(task_path, task.id, runs=2)
    assert report["proc_hits"] == [] and report["file_hits"] == [], task_path.name
    assert report["status"] == [200], report
    calls = llm_server.requests.all()
    assert len(calls) == 2
    assert [sent_key(api.header, c.headers[api.header]) for c in calls] == [canary] * 2
    assert files_containing(task_path.home, canary.encode()) == []


def turn_ended(path: TaskPath, name: str) -> dict[str, Any] | None:
    """Hive agent ``name`` once its first turn ended and it sleeps again, else None."""
    out = path.hal("agent", "show", name, "--json")
    assert out.returncode == 0, out.stderr
    agent: dict[str, Any] = json.loads(out.stdout)
    ended = [t for t in agent["recent_turns"] if t["result"]]
    return agent if ended and agent["state"] == "sleeping" else None


@pytest.mark.parametrize("task_path", ["served"], indirect=True)
@pytest.mark.parametrize("agent", sorted(PRESETS))
def test_a_hive_turn_keeps_the_key_out_of_the_sandbox(
    task_path: TaskPath, llm_server: ScriptedLLMServer, agent: str
) -> None:
    # A turn has no caller: the daemon runs it with its own environment's key.
    requires_cli(agent)
    api = PRESETS[agent]
    canary = canary_key()
    plant_agent(task_path.repo, api)
    configure(task_path, agent, api, llm_server)
    llm_server.script = Script(turns=[Turn.say("hello")], model=api.model)
    task_path.daemon_env[KEY_VAR] = canary
    task_path.start_daemon()

    spawned = task_path.hal(
        "agent", "spawn", "alpha", "--agent", agent, "--repo", str(task_path.repo)
    )
    assert spawned.returncode == 0, spawned.stderr
    assert task_path.hal("msg", "send", "alpha", "find the key").returncode == 0
    deadline = time.monotonic() + 180
    while (done := turn_ended(task_path, "alpha")) is None:
        assert time.monotonic() < deadline, "the turn never ended"
        time.sleep(0.5)

    report = report_of(task_path, done["task_id"])
    assert report["proc_hits"] == [] and report["file_hits"] == [], report
    assert report["token_prefix"] == "hal-gw-"
    assert report["status"] == [200], report
    calls = llm_server.requests.all()
    assert calls and [sent_key(api.header, c.headers[api.header]) for c in calls] == [canary] * len(
        calls
    )
    assert task_path.hal("agent", "stop", "alpha").returncode == 0
    assert files_containing(task_path.home, canary.encode()) == []
