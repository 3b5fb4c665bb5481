"""Turn statistics: one row per turn (``hive_turns``), and the totals ``hal agent stats``
shows.

Tokens and cost come from the LLM gateway's ``gateway_requests`` rows of the turn's task
within the turn's time when there are any (exact: the gateway saw every call), else from
the agent's own usage events of the turn; tool calls from the turn's ``tool_call`` events.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from hal9999.agents.parsing import add_counts
from hal9999.events.models import ToolCall, Usage
from hal9999.events.reader import read_events
from hal9999.store import Store, TaskRecord

TurnResult = Literal["ok", "error", "budget", "timeout", "crashed", "stopped"]


class TurnRow(BaseModel):
    """One turn of an agent."""

    id: int
    agent: str
    task_id: str | None = None
    model: str | None = None
    wake_reason: str
    started_at: float
    ended_at: float | None = None
    duration_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    usage_source: str | None = None
    """``gateway`` (exact), ``agent`` (the agent's own report) or None (no usage seen)."""
    tool_calls: int = 0
    tools: dict[str, int] = {}
    result: str | None = None
    open_threads: int | None = None
    messages: list[str] = []
    """The ids of the mailbox entries the turn was woken with, then of the messages its
    agent took through its tools during it."""


def _row(row: Any) -> TurnRow:
    data = dict(zip(row.keys(), row, strict=True))
    data["tools"] = json.loads(data["tools"])
    data["messages"] = json.loads(data["messages"])
    return TurnRow.model_validate(data)


def start_turn(
    store: Store, agent: str, task_id: str | None, wake_reason: str, messages: list[str]
) -> int:
    """Open a turn row; returns its id."""
    with store._write() as conn:
        cursor = conn.execute(
            "INSERT INTO hive_turns (agent, task_id, wake_reason, started_at, messages)"
            " VALUES (?, ?, ?, ?, ?)",
            (agent, task_id, wake_reason, time.time(), json.dumps(messages)),
        )
        return int(cursor.lastrowid or 0)


def set_turn_task(store: Store, turn_id: int, task_id: str) -> None:
    """Name the task a turn runs as (known once the first turn's task exists)."""
    with store._write() as conn:
        conn.execute("UPDATE hive_turns SET task_id = ? WHERE id = ?", (task_id, turn_id))


def turn_messages(store: Store, turn_id: int) -> list[str]:
    """The ids a turn took: those it was woken with and those its agent took through its
    tools during it (:func:`hal9999.hive.broker.take`)."""
    rows = store._query("SELECT messages FROM hive_turns WHERE id = ?", (turn_id,))
    return [str(i) for i in json.loads(rows[0][0])] if rows else []


def open_turn(store: Store, agent: str) -> TurnRow | None:
    """The agent's turn that has not ended (a daemon died during it), if any."""
    rows = store._query(
        "SELECT * FROM hive_turns WHERE agent = ? AND ended_at IS NULL ORDER BY id DESC LIMIT 1",
        (agent,),
    )
    return _row(rows[0]) if rows else None


def measure(store: Store, task: TaskRecord | None, events_file: Path | None, since: float,
            after_seq: int) -> dict[str, Any]:  # fmt: skip
    """Tokens, cost, model and tools of a turn: its task's events above ``after_seq`` and
    the gateway's rows of the task from ``since``."""
    found: dict[str, Any] = {"tool_calls": 0, "tools": {}, "usage_source": None}
    if task is None:
        return found
    tools: Counter[str] = Counter()
    agent_usage: list[Usage] = []
    if events_file is not None and events_file.exists():
        for event in read_events(events_file, after_seq=after_seq):
            if isinstance(event, ToolCall):
                tools[event.name] += 1
            elif isinstance(event, Usage) and event.source == "agent":
                agent_usage.append(event)
    found["tool_calls"] = sum(tools.values())
    found["tools"] = dict(tools)
    calls = [r for r in store.gateway_requests(task.id) if r.ts >= since]
    if calls:
        found.update(
            usage_source="gateway",
            input_tokens=sum(r.input_tokens for r in calls),
            output_tokens=sum(r.output_tokens for r in calls),
            cache_read_tokens=sum(r.cache_read_tokens for r in calls),
            cache_write_tokens=sum(r.cache_write_tokens for r in calls),
            cost_usd=sum(r.cost_usd or 0.0 for r in calls)
            if any(r.cost_usd is not None for r in calls) else None,
            model=next((r.model for r in reversed(calls) if r.model), None),
        )  # fmt: skip
    elif agent_usage:
        totals = [u for u in agent_usage if u.total]
        steps = totals[-1:] if totals else agent_usage
        found.update(
            usage_source="agent",
            input_tokens=add_counts(*(u.input_tokens for u in steps)),
            output_tokens=add_counts(*(u.output_tokens for u in steps)),
            cache_read_tokens=add_counts(*(u.cache_read_tokens for u in steps)),
            cache_write_tokens=add_counts(*(u.cache_write_tokens for u in steps)),
            cost_usd=sum(u.cost_usd for u in steps if u.cost_usd is not None)
            if any(u.cost_usd is not None for u in steps) else None,
            model=next((u.model for u in reversed(steps) if u.model), None),
        )  # fmt: skip
    return found


def finish_turn(
    store: Store, turn_id: int, result: TurnResult, measured: dict[str, Any],
    open_threads: int | None,
) -> TurnRow:  # fmt: skip
    """Close a turn row with its result and figures; returns it."""
    now = time.time()
    fields = {**measured, "result": result, "ended_at": now, "open_threads": open_threads}
    fields["tools"] = json.dumps(fields.get("tools", {}))
    with store._write() as conn:
        (started,) = conn.execute(
            "SELECT started_at FROM hive_turns WHERE id = ?", (turn_id,)
        ).fetchone()
        fields["duration_ms"] = round((now - float(started)) * 1000, 1)
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        conn.execute(
            f"UPDATE hive_turns SET {assignments} WHERE id = :id", {**fields, "id": turn_id}
        )
        row = conn.execute("SELECT * FROM hive_turns WHERE id = ?", (turn_id,)).fetchone()
    return _row(row)


def turns(store: Store, agent: str, *, limit: int = 1000) -> list[TurnRow]:
    """An agent's most recent turns, oldest first."""
    rows = store._query(
        "SELECT * FROM (SELECT * FROM hive_turns WHERE agent = ? ORDER BY id DESC LIMIT ?)"
        " ORDER BY id",
        (agent, limit),
    )
    return [_row(r) for r in rows]


def hive_spent(store: Store, since: float) -> tuple[int, float]:
    """Tokens and dollars all agents' turns spent since ``since``."""
    [row] = store._query(
        "SELECT COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_usd), 0)"
        " FROM hive_turns WHERE started_at >= ?",
        (since,),
    )
    return int(row[0]), float(row[1])


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def summary(store: Store, agent: str) -> dict[str, Any]:
    """Totals of an agent's turns: counts by result, tokens, cost, tools, p50/p95 time."""
    rows = turns(store, agent, limit=1_000_000)
    ended = [r for r in rows if r.duration_ms is not None]
    durations = [float(r.duration_ms) for r in ended if r.duration_ms is not None]
    tools: Counter[str] = Counter()
    for r in rows:
        tools.update(r.tools)
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    add: Callable[[str], int] = lambda name: sum(getattr(r, name) for r in rows)  # noqa: E731
    return {
        "agent": agent,
        "turns": len(rows),
        "results": dict(Counter(r.result or "running" for r in rows)),
        "input_tokens": add("input_tokens"),
        "output_tokens": add("output_tokens"),
        "cache_read_tokens": add("cache_read_tokens"),
        "cache_write_tokens": add("cache_write_tokens"),
        "cost_usd": round(sum(costs), 6) if costs else None,
        "tool_calls": add("tool_calls"),
        "tools": dict(tools.most_common()),
        "p50_ms": percentile(durations, 0.5),
        "p95_ms": percentile(durations, 0.95),
        "total_ms": round(sum(durations), 1),
        "last": rows[-1].model_dump() if rows else None,
    }
