"""Which hive agents would start with no API key: their turns run in ``hal serve``, whose
LLM gateway takes each key from the daemon's own environment (or a ``hal auth`` sign-in),
never from the shell that sent the message."""

from __future__ import annotations

from collections.abc import Mapping

from hal9999.agents.base import needs_network
from hal9999.agents.registry import resolve_agent
from hal9999.config import HalConfig
from hal9999.errors import HalError
from hal9999.home import HalPaths
from hal9999.store import Store


def keyless_agents(config: HalConfig, environ: Mapping[str, str]) -> list[str]:
    """One line for each hive agent of ``config``'s home whose preset calls an LLM API
    through the gateway with no key in ``environ`` nor signed in: its name, the preset and
    the variable to export before ``hal serve`` starts."""
    if not HalPaths(config.home).db.exists():
        return []  # no store yet, so no agent
    from hal9999.hive.store import list_agents

    try:
        with Store.open(config.home) as store:
            agents = list_agents(store)
    except HalError:
        return []  # a store that cannot be read (a full disk): the daemon's start says why
    if not agents:  # the modules that find a key load only for a hive that has agents
        return []
    from hal9999.gateway.tasks import missing_key
    from hal9999.tasks.context import missing_key_line

    lines = []
    for record in agents:
        try:
            agent = resolve_agent(record.agent, config.agent_settings(record.agent))
        except HalError:
            continue  # its turn says why it cannot start
        key_env = missing_key(config, agent, environ) if needs_network(agent) else None
        if key_env is not None:
            why = missing_key_line(record.agent, key_env, daemon=True)
            lines.append(f"hive agent {record.name}: {why}")
    return lines
