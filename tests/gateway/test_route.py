"""A task's route: the agent settings it gets, its budget and egress hosts (``hal run
--max-tokens/--max-cost/--egress``, kept for every run), and the checks on those values."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal9999.agents.registry import resolve_agent
from hal9999.config import GatewayConfig, HalConfig
from hal9999.errors import UsageError
from hal9999.gateway.tasks import TOKEN_VAR, route_for, save_budget
from hal9999.tasks.request import run_request


def test_route_carries_the_task_budget_and_egress(tmp_path: Path) -> None:
    config = HalConfig(home=tmp_path, gateway=GatewayConfig(egress=["pypi.org"], max_tokens=9))
    save_budget(tmp_path, 500, 1.5, ["git.example:22"])
    agent = resolve_agent("claude", config.agent_settings("claude"))
    route = route_for(config, agent, "t1", {"ANTHROPIC_API_KEY": "sk-x"}, {}, budget=tmp_path)
    assert route is not None
    grant = route.grant
    assert (grant.max_tokens, grant.max_cost_usd) == (500, 1.5)
    assert grant.egress == ["pypi.org", "git.example:22"]
    assert grant.upstream == "https://api.anthropic.com" and grant.key == "sk-x"
    settings = route.agent_settings(config.agent_settings("claude"))
    assert settings.api_key_env == TOKEN_VAR
    assert settings.base_url == f"http://127.0.0.1:{route.port}"


def test_no_key_on_the_host_means_no_route(tmp_path: Path) -> None:
    config = HalConfig(home=tmp_path)
    agent = resolve_agent("claude", config.agent_settings("claude"))
    assert route_for(config, agent, "t1", {}, {}) is None


def test_the_key_in_any_variable_becomes_the_placeholder(tmp_path: Path) -> None:
    config = HalConfig(home=tmp_path)
    agent = resolve_agent("claude", config.agent_settings("claude"))
    key = "sk-ant-" + "k" * 30
    route = route_for(config, agent, "t1", {"ANTHROPIC_API_KEY": key}, {})
    assert route is not None
    token = route.grant.token
    env = {"OPENAI_API_KEY": key, "AUTH": f"Bearer {key}", "PATH": "/usr/bin"}
    assert route.shield(env) == (
        {"OPENAI_API_KEY": token, "AUTH": f"Bearer {token}", "PATH": "/usr/bin"},
        ["AUTH", "OPENAI_API_KEY"],
    )
    # A short dummy key is replaced only where it is the whole value.
    short = route_for(config, agent, "t2", {"ANTHROPIC_API_KEY": "usr"}, {})
    assert short is not None
    assert short.shield({"K": "usr", "PATH": "/usr/bin"}) == (
        {"K": short.grant.token, "PATH": "/usr/bin"},
        ["K"],
    )


@pytest.mark.parametrize("url", ["api.anthropic.com", "ftp://api.anthropic.com", "not a url"])
def test_a_route_to_an_unroutable_url_is_refused_not_skipped(tmp_path: Path, url: str) -> None:
    # Settings that never went through the config's check: refused, never the agent going
    # direct with the key (and no budget).
    from hal9999.config import AgentConfig
    from hal9999.errors import ConfigError

    unchecked = {"claude": AgentConfig.model_construct(base_url=url)}
    config = HalConfig(home=tmp_path).model_copy(update={"agents": unchecked})
    agent = resolve_agent("claude", config.agent_settings("claude"))
    with pytest.raises(ConfigError) as refused:
        route_for(config, agent, "t1", {"ANTHROPIC_API_KEY": "sk-x"}, {})
    assert refused.value.message.startswith("[agents.claude] base_url")
    assert "sk-x" not in refused.value.message + str(refused.value.hint)


BAD_OPTIONS: list[dict[str, object]] = [
    {"max_tokens": 0},
    {"max_cost_usd": -1.0},
    {"egress": ["-oProxyCommand=x"]},
    {"egress": ["evil.example/path"]},
]


@pytest.mark.parametrize("bad", BAD_OPTIONS)
def test_run_options_refuse_bad_budget_and_egress(bad: dict[str, object]) -> None:
    base = {"prompt": "p", "agent": "claude", "provider": "bwrap", "process_manager": "tmux"}
    with pytest.raises(UsageError):
        run_request({**base, **bad}, wire=False)
    run_request({**base, "max_tokens": 10, "egress": ["*.pypi.org", "git.example:22"]}, wire=False)


def test_the_daemon_is_handed_the_presets_key_when_the_config_names_none(tmp_path: Path) -> None:
    # Apart from the agent's environment: only the gateway's route reads upstream_keys.
    from hal9999.server.client import client_secrets, upstream_keys

    config = HalConfig(home=tmp_path)  # no [agents.claude] api_key_env
    request = {"prompt": "p", "agent": "claude", "provider": "bwrap"}
    environ = {"ANTHROPIC_API_KEY": "sk-from-the-shell", "OPENAI_API_KEY": "sk-other"}
    assert upstream_keys(config, "claude", environ) == {"ANTHROPIC_API_KEY": "sk-from-the-shell"}
    assert client_secrets(config, request, environ) == {}
    codex = {"prompt": "p", "agent": "codex", "provider": "bwrap"}
    assert upstream_keys(config, "codex", environ) == {"OPENAI_API_KEY": "sk-other"}
    assert client_secrets(config, codex, environ) == {}
    assert upstream_keys(config, "sh -c true", environ) == {}  # a template names no API


def test_a_resume_through_the_daemon_is_handed_what_a_run_is(tmp_path: Path) -> None:
    # A resume through the daemon sent only its --env: the task's own variables, the
    # config's secrets and the preset's key variable stayed in the client's shell.
    from hal9999.credentials import EnvKinds
    from hal9999.errors import CredentialsError
    from hal9999.server.client import resume_secrets
    from hal9999.store import TaskRecord

    session = tmp_path / "session"
    (session / "run").mkdir(parents=True)
    EnvKinds(literal=["MODE"], secret=["API_TOKEN"]).save(session / "run" / "env-kinds.json")
    config = HalConfig(home=tmp_path, forward_env=["EXTRA"], secrets=["OTHER_SECRET"])
    task = TaskRecord(id="t1", prompt="p", agent="claude", provider="bwrap",
                      process_manager="tmux", repo=str(tmp_path), repo_kind="local",
                      branch="hal/t1", status="stopped", created_at=0, session_dir=str(session),
                      env_keys=["API_TOKEN", "MODE", "EXTRA"])  # fmt: skip
    environ = {"API_TOKEN": "tok", "MODE": "fast", "OTHER_SECRET": "o",
               "ANTHROPIC_API_KEY": "sk-from-the-shell", "UNRELATED": "u"}  # fmt: skip
    # The preset's key goes apart, in upstream_keys.
    assert resume_secrets(config, task, {"MODE": "slow"}, environ) == {
        "API_TOKEN": "tok", "MODE": "slow", "OTHER_SECRET": "o",
    }  # fmt: skip
    # forward_env goes when set, as with `hal run`; the task's --env and --secret must be.
    del environ["API_TOKEN"], environ["MODE"]
    with pytest.raises(CredentialsError) as raised:
        resume_secrets(config, task, {}, environ)
    assert raised.value.message == "task t1 needs API_TOKEN, MODE, which this shell does not set"
    assert raised.value.hint is not None and "export API_TOKEN=..." in raised.value.hint
    assert "--env" not in raised.value.hint, "a secret is never put on the command line"
    with pytest.raises(CredentialsError) as raised:
        resume_secrets(config, task, {"API_TOKEN": "tok"}, environ)
    assert raised.value.hint is not None and "--env MODE=VALUE" in raised.value.hint
