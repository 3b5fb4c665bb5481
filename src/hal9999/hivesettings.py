"""The hive's settings (``[hive]`` in the config), with documented defaults: a config table,
checked with the others (a run, ``hal doctor``), so it sits below the hive and the tasks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hal9999.config import HalConfig
from hal9999.errors import ConfigError
from hal9999.values import describe, setting_hint, with_others


class HiveSettings(BaseModel):
    """``[hive]``: guards, crash watch and retention of the hive."""

    # Strict: TOML has real numbers and booleans, so ``keep_warm = "yes"`` is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True)

    daily_budget_usd: float | None = Field(default=None, gt=0)
    """Dollars all agents' turns may spend in any 24 h (None: no hive budget). Past it no
    turn starts; the operator is told once."""
    daily_budget_tokens: int | None = Field(default=None, gt=0)
    """Tokens all agents' turns may spend in any 24 h (None: no limit)."""
    rate_per_minute: int = Field(default=30, ge=0)
    """Messages one agent may send in any 60 s (0: no limit)."""
    loop_messages: int = Field(default=24, ge=0)
    """Messages between two agents (both ways, no operator message to either) within
    ``loop_window_s`` that count as a ping-pong loop: each of the two that sent at least half
    as many as it got is stopped (0: never)."""
    loop_window_s: float = Field(default=600.0, gt=0)
    unread_to_operator_chars: int = Field(default=4 << 20, ge=0)
    """Characters of one agent's messages to the operator not read yet past which its sends
    to the operator are refused, until the operator reads them (0: no limit). Retention
    never removes unread mail."""
    unread_to_agents_chars: int = Field(default=4 << 20, ge=0)
    """The same for one agent's messages to agents, all of them together (a stopped agent
    takes no turn: its mail stays unread until it is started) (0: no limit)."""
    subtasks_per_day: int = Field(default=100, ge=1)
    """Sub-tasks (MCP ``run_task``) one agent may start in any 24 h: each keeps a session
    with a clone of the repository on the host, and one that ends at once frees its place
    among the active ones (an agent looping on ``run_task`` filled the host's disk)."""
    mcp_connections_per_agent: int = Field(default=8, ge=1)
    """MCP connections one agent may hold at once (a CLI uses one); one more is closed."""
    mcp_connections: int = Field(default=4096, ge=1)
    """MCP connections of all agents together; one more is closed."""
    mcp_answer_bytes_per_agent: int = Field(default=16 << 20, ge=1 << 20)
    """Bytes of MCP answers one agent's requests may hold in the daemon until it reads them,
    each request counted as its largest answer (1 MiB) until that answer has left; past it
    the agent's connections read no more requests until it reads (see docs/hive.md)."""
    mcp_answer_bytes: int = Field(default=2048 << 20, ge=1 << 20)
    """The same for all agents together: the daemon's memory for MCP answers."""
    mcp_read_bytes_per_agent: int = Field(default=8 << 20, ge=4 << 20)
    """Bytes of MCP request lines one agent's connections may hold in the daemon before
    their newline comes, past the first 32 KiB of each (at least one whole line, 4 MiB);
    a connection whose line would pass it is answered an error and hung up (docs/hive.md)."""
    mcp_read_bytes: int = Field(default=256 << 20, ge=4 << 20)
    """The same for all agents together: the daemon's memory for unended MCP lines."""
    crash_backoff_s: float = Field(default=2.0, ge=0)
    """First restart delay after a crash; doubles with each crash in the window."""
    crash_backoff_max_s: float = Field(default=300.0, ge=0)
    crash_loop: int = Field(default=3, ge=1)
    """Crashes within ``crash_window_s`` after which crash watch gives up (state
    ``crashed``, the operator told) instead of restarting."""
    crash_window_s: float = Field(default=600.0, gt=0)
    turn_timeout_s: float = Field(default=1800.0, gt=0)
    """The longest one turn may run."""
    keep_warm: bool = False
    """The default of ``hal agent spawn --keep-warm``: agents keep their sandbox between turns."""
    warm_idle_s: float = Field(default=600.0, gt=0)
    """The default of ``--warm-idle``: a warm agent's sandbox is released after this long
    with no turn."""
    keep_messages_days: float = Field(default=30.0, gt=0)
    """Read messages older than this are removed by ``hal vacuum`` (never unread ones)."""
    keep_events_days: float = Field(default=7.0, gt=0)
    """Hive events older than this are removed."""
    keep_turns_days: float = Field(default=90.0, gt=0)
    """Turn statistics older than this are removed."""
    keep_threads_days: float = Field(default=30.0, gt=0)
    """Closed threads (resolved proposals, answered or expired questions, delivered
    reminders) older than this are removed; pending ones never."""
    vacuum_interval_s: float = Field(default=3600.0, gt=0)
    """How often the daemon runs the retention job."""
    agent_files_mb: int = Field(default=256, ge=1)
    """MiB of one agent's log and event files (its long-lived task's ``agent.log`` and
    ``events.jsonl``) past which, at the start of its next turn, they are rotated: kept as
    ``.1``, the older ``.1`` dropped (see docs/hive.md: at most this plus two turns' output
    on disk)."""
    self_wake_min_s: float = Field(default=30.0, ge=0)
    """The least time between the end of an agent's turn and a turn woken by its own
    reminders alone (other mail wakes it at once): ``remind(in_s=1)`` in every turn cannot
    make the agent run back to back (0: no wait)."""


def hive_settings(config: HalConfig) -> HiveSettings:
    """The validated ``[hive]`` table of ``config``."""
    try:
        return HiveSettings.model_validate(config.hive)
    except ValidationError as exc:
        # Each bad key (hal doctor says them all; a run the first).
        raise with_others([_invalid(err, config) for err in exc.errors()]) from exc


def _invalid(err: Any, config: HalConfig) -> ConfigError:
    where = ".".join(str(p) for p in err["loc"])
    # The file that set it too: a table alone does not say which config file to fix.
    from hal9999.config_origin import source_at  # an error's path only

    found = source_at(("hive", *map(str, err["loc"])), config._origin)
    known = found != "config"
    table, prefix = (f"[hive] of {found}", f"{found}: ") if known else ("[hive]", "")
    hint = (
        setting_hint(err, table, HiveSettings.model_fields)
        if err["type"] == "extra_forbidden"
        else f"fix it in {table}; see docs/hive.md for the hive settings"
    )
    return ConfigError(f"{prefix}[hive] {where}: {describe(err)}", hint=hint)
