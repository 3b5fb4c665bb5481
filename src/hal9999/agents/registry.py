"""Find an agent by preset name or build one from a command template.

Presets are the ``hal9999.agents`` entry points; the built-in ones are declared in
``pyproject.toml`` and load exactly like a third-party plugin's. Each entry point names a
class taking ``settings: AgentSettings | None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hal9999.agents.base import Agent, AgentSettings
from hal9999.agents.custom import TemplateAgent
from hal9999.entrypoints import EntryPointLike
from hal9999.entrypoints import group_entry_points as entry_points
from hal9999.errors import AgentError, HalError, UnknownAgent

if TYPE_CHECKING:
    from hal9999.config import HalConfig

ENTRY_POINT_GROUP = "hal9999.agents"
"""The entry point group presets register under."""


def _presets() -> dict[str, EntryPointLike]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_agents() -> list[str]:
    """Names of the registered presets, sorted."""
    return sorted(_presets())


def is_template(name_or_template: str) -> bool:
    """Whether the string is a command template rather than a preset name."""
    return "{{" in name_or_template or any(c.isspace() for c in name_or_template)


def resolve_agent(name_or_template: str, settings: AgentSettings | None = None) -> Agent:
    """The preset registered as ``name_or_template``, or a :class:`TemplateAgent` for it."""
    if is_template(name_or_template):
        return TemplateAgent(name_or_template, settings)
    presets = _presets()
    entry_point = presets.get(name_or_template)
    if entry_point is None:
        raise UnknownAgent(
            f"unknown agent {name_or_template!r}",
            hint=(
                f"presets: {', '.join(sorted(presets)) or 'none installed'}; or give a command "
                "template such as 'my-agent --task-file {{prompt_file}}' (placeholders: "
                "{{prompt}}, {{prompt_file}}, {{workspace}}, {{task_id}}, {{home}})"
            ),
        )
    try:
        factory = entry_point.load()
        agent = factory(settings)
    except Exception as exc:  # a broken plugin must not take the CLI down with a traceback
        raise AgentError(
            f"agent preset {name_or_template!r} ({entry_point.value}) failed to load: {exc}",
            hint="reinstall the package that provides it",
        ) from exc
    if not isinstance(agent, Agent):
        raise AgentError(
            f"agent preset {name_or_template!r} ({entry_point.value}) is not an Agent",
            hint="it must provide name, program, install_hint, supports_resume, build, parser",
        )
    return agent


def upstream_key_env(config: HalConfig, agent_name: str) -> str | None:
    """The host variable holding the key of ``agent_name``'s API: ``api_key_env`` when the
    config sets it, else the preset's own (``ANTHROPIC_API_KEY`` for claude, ...), so a
    daemon is handed the key even when the config names no variable. (Here, not with the
    gateway's route: every task's creation asks, and a plain run loads no gateway module.)"""
    settings = config.agent_settings(agent_name)
    if settings.api_key_env:
        return settings.api_key_env
    try:
        agent = resolve_agent(agent_name, settings)
    except HalError:
        return None
    choose = getattr(agent, "gateway_upstream", None)
    chosen = choose(settings) if choose is not None else None
    return chosen[1] if chosen is not None else None
