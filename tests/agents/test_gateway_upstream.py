"""Which upstream the LLM gateway uses for each preset (PresetAgent.gateway_upstream): aider
and opencode name another provider's endpoint by a ``provider/model``, which goes direct."""

from __future__ import annotations

import pytest

from hal9999.agents.base import AgentSettings
from hal9999.agents.registry import resolve_agent

OPENAI = ("https://api.openai.com/v1", "OPENAI_API_KEY")


@pytest.mark.parametrize("name", ["aider", "opencode"])
@pytest.mark.parametrize(
    ("settings", "chosen"),
    [
        (AgentSettings(), OPENAI),
        (AgentSettings(model="gpt-4.1"), OPENAI),
        (AgentSettings(model="openai/gpt-4.1"), OPENAI),
        (AgentSettings(model="anthropic/claude-sonnet-4-5"), None),
        (AgentSettings(model="anthropic/x", api_key_env="MY_KEY"), None),
        (AgentSettings(model="anthropic/x", base_url="http://llm:8000/v1"),
         ("http://llm:8000/v1", "OPENAI_API_KEY")),
        (AgentSettings(model="m", base_url="http://llm:8000/v1", api_key_env="MY_KEY"),
         ("http://llm:8000/v1", "MY_KEY")),
    ],
)  # fmt: skip
def test_a_provider_prefixed_model_goes_direct(
    name: str, settings: AgentSettings, chosen: tuple[str, str] | None
) -> None:
    assert resolve_agent(name, settings).gateway_upstream(settings) == chosen  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "chosen"),
    [
        ("claude", ("https://api.anthropic.com", "ANTHROPIC_API_KEY")),
        ("codex", OPENAI),
        ("gemini", ("https://generativelanguage.googleapis.com", "GEMINI_API_KEY")),
    ],
)
def test_other_presets_keep_their_upstream_whatever_the_model_names(
    name: str, chosen: tuple[str, str]
) -> None:
    settings = AgentSettings(model="prov/model")
    assert resolve_agent(name, settings).gateway_upstream(settings) == chosen  # type: ignore[attr-defined]
