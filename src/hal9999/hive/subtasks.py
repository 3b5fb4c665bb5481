"""The sub-tasks hive agents start over MCP (``run_task``): which agent started which, and
what they spent.

Each agent's sub-task ids are listed in ``HAL_HOME/hive/mcp-tasks/<name>.json`` (hal's own
file, never inside a sandbox). What they spend counts against the hive's daily budget like
the agents' own turns: a sub-task is the agent's work done in another sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path

from hal9999 import fs
from hal9999.store import Store


def folder(home: Path) -> Path:
    """Where the agents' lists of sub-tasks are."""
    return home / "hive" / "mcp-tasks"


def tasks_file(home: Path, agent: str) -> Path:
    """Where ``agent``'s sub-task ids are listed."""
    return folder(home) / f"{agent}.json"


def owned(home: Path, agent: str) -> list[str]:
    """The ids of the sub-tasks ``agent`` started (none when the list is missing or bad)."""
    try:
        data = json.loads(tasks_file(home, agent).read_text())
    except (OSError, ValueError):
        return []
    return [str(t) for t in data] if isinstance(data, list) else []


def own(home: Path, agent: str, task_id: str) -> None:
    """Record that ``agent`` started sub-task ``task_id``."""
    path = tasks_file(home, agent)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fs.write_json(path, [*owned(home, agent), task_id], mode=None, durable=False)


def spent(store: Store, home: Path, since: float) -> tuple[int, float]:
    """Tokens and dollars the gateway recorded for every agent's sub-tasks since ``since``,
    and, for a sub-task made since then that made no call through it (no gateway
    configured), what its agent reported, as a turn's figures are (one sum per 500
    sub-tasks: a hive's lists only grow). Before, such a sub-task counted nothing."""
    lists = folder(home)
    paths = sorted(lists.glob("*.json")) if lists.is_dir() else []
    ids = [task_id for path in paths for task_id in owned(home, path.stem)]
    tokens, cost = 0, 0.0
    for first in range(0, len(ids), 500):
        chunk = ids[first : first + 500]
        [row] = store._query(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_usd), 0)"
            f" FROM gateway_requests WHERE ts >= ? AND task_id IN ({','.join('?' * len(chunk))})",
            (since, *chunk),
        )
        tokens, cost = tokens + int(row[0]), cost + float(row[1])
        [row] = store._query(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_usd), 0)"
            f" FROM tasks WHERE created_at >= ? AND id IN ({','.join('?' * len(chunk))})"
            " AND NOT EXISTS (SELECT 1 FROM gateway_requests g WHERE g.task_id = tasks.id)",
            (since, *chunk),
        )
        tokens, cost = tokens + int(row[0]), cost + float(row[1])
    return tokens, cost
