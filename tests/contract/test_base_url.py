"""A base URL the LLM gateway cannot route is refused in one line before any task exists, on
every path: it never means the agent goes direct holding the real key, with no budget."""

from __future__ import annotations

import json

import pytest
from tests.contract.conftest import TaskPath
from tests.support.hal import one_error_line

from hal9999.agents.base import AgentSettings
from hal9999.config import AgentConfig
from hal9999.errors import ConfigError

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(180)]

UNROUTABLE = ["api.anthropic.com", "ftp://api.anthropic.com", "not a url", "http://:80/v1",
              "https://api.anthropic.com:99999"]  # fmt: skip


@pytest.mark.parametrize("url", UNROUTABLE)
def test_hal_run_refuses_an_unroutable_base_url_before_a_task(
    task_path: TaskPath, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    if task_path.name == "served":
        task_path.start_daemon()  # before the config: its own settings are the defaults
    task_path.config_file.write_text(f"[agents.claude]\nbase_url = {json.dumps(url)}\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-hal-canary-unused")

    out = task_path.hal("run", "--agent", "claude", "fix it")

    assert out.returncode == 2, out.stderr
    line = one_error_line(out)
    assert "agents.claude.base_url" in line and "http:// or https://" in line, line
    assert "sk-hal-canary" not in out.stderr + out.stdout
    task_path.config_file.unlink()  # the listing reads the config too
    assert json.loads(task_path.hal("task", "list", "--json").stdout) == []
    sessions = task_path.home / "sessions"
    assert not sessions.exists() or not any(sessions.iterdir())


async def test_a_settings_object_the_config_never_checked_is_refused_at_the_route(
    task_path: TaskPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A config built past validation (a plugin, a caller's own code): refused before any
    # task exists (the daemon also checks the config document it is sent).
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-hal-canary-unused")
    request = task_path.request("fix it", agent="claude")
    assert request["config"] is not None
    bad = AgentConfig.model_construct(base_url="api.anthropic.com")
    request["config"] = request["config"].model_copy(update={"agents": {"claude": bad}})
    assert request["config"].agent_settings("claude") == AgentSettings(base_url="api.anthropic.com")

    with pytest.raises(ConfigError) as refused:
        await task_path.api.run(request)

    assert "base_url" in refused.value.message, refused.value.message
    assert json.loads(task_path.hal("task", "list", "--json").stdout) == []
