"""The MCP hub in ``hal serve``: sub-tasks through the daemon's own task API, and the
per-agent sockets kept in step with the hive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999.gateway.tasks import saved_token
from hal9999.hive.mcp.budget import McpLimits
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Hive
from hal9999.hive.store import get_agent
from hal9999.redact import SecretMasker

if TYPE_CHECKING:
    from hal9999.server.daemon import Daemon


def agent_maskers(daemon: Daemon) -> Callable[[str], SecretMasker | None]:
    """What :attr:`Hive.masker_of` answers in the daemon: the masker of the agent's task, as
    its turns' output is masked (its secrets, forwarded keys, credential files' tokens and
    its gateway placeholder), kept while the task and token are the same (blocking)."""
    made: dict[tuple[str, str | None], SecretMasker] = {}

    def masker_of(name: str) -> SecretMasker | None:
        task_id = get_agent(daemon.store, name).task_id
        if task_id is None:
            return None
        task = daemon.store.get_task(task_id)
        token = saved_token(Path(task.session_dir) / "run")
        key = (task_id, token)
        if key not in made:
            masker = daemon.service.masker(task)
            if token is not None:
                masker.add(token)
            made.clear()  # the turn's token changed: the old one serves no call
            made[key] = masker
        return made[key]

    return masker_of


def hub_for(daemon: Daemon) -> McpHub:
    """The daemon's MCP hub (serving starts with :meth:`McpHub.run_forever`)."""
    config = daemon.config

    def defaults() -> dict[str, Any]:
        return {"process_manager": config.process_manager, "timeout_s": config.timeout_s}

    hive = Hive(
        store=daemon.store,
        home=config.home,
        tasks=daemon.tasks,  # the daemon's task API, as its routes use
        request_defaults=defaults,
        subtasks_per_day=daemon.hive_settings.subtasks_per_day,
        lifecycle=getattr(daemon, "hive", None),  # the turn loop: the manager's stop/restart
        over_budget=getattr(getattr(daemon, "hive", None), "over_budget", None),
        masker_of=agent_maskers(daemon),
    )
    s = daemon.hive_settings
    limits = McpLimits(
        connections_per_agent=s.mcp_connections_per_agent,
        connections=s.mcp_connections,
        answer_bytes_per_agent=s.mcp_answer_bytes_per_agent,
        answer_bytes=s.mcp_answer_bytes,
        read_bytes_per_agent=s.mcp_read_bytes_per_agent,
        read_bytes=s.mcp_read_bytes,
    )
    return McpHub(hive, limits=limits)
