"""Presets load through entry points; templates are recognised; unknown names fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.plugin_package import install_package

from hal9999.agents.aider import AiderAgent
from hal9999.agents.base import Agent, AgentContext, AgentLaunch, AgentSettings, OutputParser
from hal9999.agents.claude import ClaudeCodeAgent
from hal9999.agents.codex import CodexAgent
from hal9999.agents.custom import PresetAgent, TemplateAgent, agent_launch
from hal9999.agents.gemini import GeminiAgent
from hal9999.agents.goose import GooseAgent
from hal9999.agents.opencode import OpencodeAgent
from hal9999.agents.parsing import PlainTextParser
from hal9999.agents.registry import available_agents, is_template, resolve_agent
from hal9999.errors import AgentError, UnknownAgent, UsageError

PRESETS = {
    "aider": AiderAgent,
    "claude": ClaudeCodeAgent,
    "codex": CodexAgent,
    "gemini": GeminiAgent,
    "goose": GooseAgent,
    "opencode": OpencodeAgent,
}


def test_builtin_presets_are_the_registered_entry_points() -> None:
    assert available_agents() == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_resolves_to_its_class_with_settings(name: str) -> None:
    settings = AgentSettings(model="m", command="/opt/bin/tool")
    agent = resolve_agent(name, settings)
    assert type(agent) is PRESETS[name]
    assert isinstance(agent, Agent)
    assert agent.name == name
    assert agent.program == "/opt/bin/tool"
    assert agent.install_hint


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_program_defaults_to_the_cli_name(name: str) -> None:
    agent = resolve_agent(name)
    assert agent.program == name


@pytest.mark.parametrize(
    "text",
    ["my-agent {{prompt_file}}", "my-agent --flag", "run\tit", "x{{prompt}}", "a\nb"],
)
def test_templates_are_detected(text: str) -> None:
    assert is_template(text)
    assert isinstance(resolve_agent(text), TemplateAgent)


@pytest.mark.parametrize("text", ["claude", "my-agent", "./bin/agent", "a{b}"])
def test_plain_names_are_not_templates(text: str) -> None:
    assert not is_template(text)


@pytest.mark.parametrize("text", ["claude ", " codex", "\taider\n"])
def test_a_preset_name_with_spaces_around_it_is_refused_not_run_as_a_command(text: str) -> None:
    # "claude " was a template: the bare claude program, without the preset's gateway or parser.
    with pytest.raises(UnknownAgent, match="with spaces around it") as info:
        resolve_agent(text)
    assert f"write {text.strip()!r} for the preset" in (info.value.hint or "")


def test_a_padded_command_that_is_no_preset_is_still_a_template() -> None:
    assert resolve_agent(" my-agent ").name == "custom"


def test_unknown_name_lists_presets_and_template_syntax() -> None:
    with pytest.raises(UnknownAgent) as info:
        resolve_agent("clod")
    assert "clod" in info.value.message
    hint = info.value.hint or ""
    for name in PRESETS:
        assert name in hint
    assert "{{prompt_file}}" in hint
    assert info.value.code == "agent_unknown"


def test_bad_template_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"\{\{promt\}\}"):
        resolve_agent("my-agent {{promt}}")


class EchoAgent(PresetAgent):
    """A third-party preset, registered only through an entry point."""

    name = "echo"
    default_program = "echo"
    install_hint = "coreutils"

    def build(self, ctx: AgentContext) -> AgentLaunch:
        return agent_launch(ctx, [self.program_for(self.settings_for(ctx))])

    def parser(self) -> OutputParser:
        return PlainTextParser()


def _plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *entries: str) -> None:
    text = "[hal9999.agents]\n" + "".join(f"{entry}\n" for entry in entries)
    install_package(tmp_path / "site", monkeypatch, text)


def test_third_party_plugins_load_like_builtins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugins(tmp_path, monkeypatch, f"echo = {__name__}:EchoAgent")
    assert available_agents() == sorted(["echo", *PRESETS])
    agent = resolve_agent("echo", AgentSettings(command="/bin/echo"))
    assert isinstance(agent, EchoAgent)
    assert agent.program == "/bin/echo"
    with pytest.raises(UnknownAgent):
        resolve_agent("echoo")


def test_a_plugin_that_is_not_an_agent_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugins(tmp_path, monkeypatch, "bad = builtins:str")
    with pytest.raises(AgentError, match="is not an Agent"):
        resolve_agent("bad")


def test_a_plugin_that_fails_to_import_is_an_agent_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugins(tmp_path, monkeypatch, "gone = hal9999.nope:Agent")
    with pytest.raises(AgentError, match="gone"):
        resolve_agent("gone")
