"""Find an agent by preset name or build one from a command template.

Presets are the ``hal9999.agents`` entry points; the built-in ones are declared in
``pyproject.toml`` and load exactly like a third-party plugin's. Each entry point names a
class taking ``settings: AgentSettings | None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hal9999 import plugins
from hal9999.agents.base import Agent, AgentSettings
from hal9999.agents.custom import TemplateAgent
from hal9999.errors import AgentError, HalError, UnknownAgent

if TYPE_CHECKING:
    from hal9999.config import HalConfig

ENTRY_POINT_GROUP = plugins.AGENTS.group
"""The entry point group presets register under."""


def available_agents() -> list[str]:
    """Names of the registered presets, sorted."""
    return plugins.names(plugins.AGENTS)


def is_template(name_or_template: str) -> bool:
    """Whether the string is a command template rather than a preset name."""
    return "{{" in name_or_template or any(c.isspace() for c in name_or_template)


def check_agent_name(name_or_template: str, known: Callable[[str], bool] | None = None) -> None:
    """Raise :class:`UnknownAgent` unless ``name_or_template`` is a preset (``known`` says
    which names are; a scan of the entry points by default) or a command template."""
    is_known = known or (lambda name: plugins.installed(plugins.AGENTS, name))
    if is_template(name_or_template):
        bare = name_or_template.strip()
        if bare and not is_template(bare) and is_known(bare):
            # "claude " (a padded HAL_AGENT, say) would run the bare program as a command,
            # without the preset's gateway, model or parser.
            raise UnknownAgent(
                f"agent {name_or_template!r}: the preset {bare!r} with spaces around it",
                hint=f"write {bare!r} for the preset (or a command template with "
                "{{prompt_file}})",
            )
        return
    if not is_known(name_or_template):
        raise UnknownAgent(
            f"unknown agent {name_or_template!r}",
            hint=(
                f"presets: {', '.join(available_agents()) or 'none installed'}; or give a "
                "command template such as 'my-agent --task-file {{prompt_file}}' "
                "(placeholders: {{prompt}}, {{prompt_file}}, {{workspace}}, {{task_id}}, "
                "{{home}})"
            ),
        )


def resolve_agent(name_or_template: str, settings: AgentSettings | None = None) -> Agent:
    """The preset registered as ``name_or_template``, or a :class:`TemplateAgent` for it."""
    if is_template(name_or_template):
        check_agent_name(name_or_template)  # scans only for a padded preset name
        return TemplateAgent(name_or_template, settings)
    check_agent_name(name_or_template)
    agent = plugins.build(plugins.AGENTS, name_or_template, settings)
    if not isinstance(agent, Agent):
        value = plugins.find(plugins.AGENTS, name_or_template).value
        raise AgentError(
            f"agent preset {name_or_template!r} ({value}) is not an Agent",
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
    if is_template(agent_name) and getattr(TemplateAgent, "gateway_upstream", None) is None:
        # A command template names no API (valid or not): not parsed for nothing (a
        # template's parse would otherwise repeat on every task's path).
        return None
    try:
        agent = resolve_agent(agent_name, settings)
    except HalError:
        return None
    choose = getattr(agent, "gateway_upstream", None)
    chosen = choose(settings) if choose is not None else None
    return chosen[1] if chosen is not None else None
