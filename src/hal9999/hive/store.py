"""The hive's tables (migration 5): agents, messages, turns and hive events.

Every hive module reads and writes through these functions, which use the store's own
connection handling (one connection per thread, ``BEGIN IMMEDIATE`` writes), so SQL stays
in the store layer's hands and a daemon thread waiting for the write lock never blocks
another. Hive events take their ``gseq`` from the same ``event_counter`` as task events, in
the transaction that records them, so the guarantee of :mod:`hal9999.store.events` holds
for both: unique, never reused, increasing in commit order.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hal9999.errors import AgentNotFound, HiveError
from hal9999.events.hive import HiveEvent, parse_hive_event
from hal9999.store import Store
from hal9999.store.table import insert_sql

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
"""What an agent name looks like (it becomes a branch, a directory and a socket name)."""
RESERVED_NAMES = frozenset({"operator", "hal", "you"})
"""Names no agent may take: the operator's and hal's own (system notices), and ``you``, which
the CLI prints for the operator (``hal questions list``: a question to an agent named
``you`` read as one to the operator)."""

AgentStateName = Literal["sleeping", "running", "stopped", "crashed"]
"""``sleeping``: waits for mail, no sandbox held; ``running``: a turn is in progress;
``stopped``: by the operator (or a guard), wakes for nothing; ``crashed``: crash watch gave
up on it (a crash loop), wakes for nothing until started again."""

_LIST_HINT = "list agents with `hal agent list`"

InTransaction = Callable[[sqlite3.Connection, list[HiveEvent]], None]
"""More writes for the caller's transaction, their hive events appended to the list: what
must be committed with a change of an agent or not at all (an approval it carries out)."""


class AgentPolicy(BaseModel):
    """How the hive treats an agent (stored as JSON with it)."""

    model_config = ConfigDict(extra="forbid")

    restart: Literal["on-crash", "never"] = "on-crash"
    """Whether crash watch restarts the agent's turn after a crash."""
    warm: bool = False
    """Keep the sandbox between turns: the next turn runs in the same one, no new create
    (released after ``warm_idle_s`` idle, on stop/rm and when the daemon stops)."""
    warm_idle_s: float = Field(default=600.0, gt=0)
    """How long a warm agent's sandbox is kept with no turn."""
    turn_timeout_s: float = 1800.0
    """The longest one turn may run."""


class AgentRecord(BaseModel):
    """One named agent of the hive."""

    name: str
    agent: str
    """The agent preset (claude, codex, custom...)."""
    provider: str
    repo: str | None = None
    kind: Literal["agent", "manager"] = "agent"
    state: AgentStateName = "sleeping"
    detail: str | None = None
    """Why it is in its state (a stop reason, a crash)."""
    task_id: str | None = None
    """Its long-lived task: every turn is a resume of it (None before the first turn)."""
    policy: AgentPolicy = Field(default_factory=AgentPolicy)
    created_at: float
    updated_at: float
    crashes: int = 0
    """Crashes in the current crash window."""
    last_crash_at: float | None = None
    loop_since: float | None = None
    """When the operator last started it again: the message-loop guard counts from then."""


_AGENT_COLUMNS = tuple(AgentRecord.model_fields)


def check_name(name: str) -> str:
    """``name`` if it is a valid, unreserved agent name; else a clear error."""
    if not NAME_RE.fullmatch(name):
        raise HiveError(
            f"{name!r} is not a valid agent name",
            hint="use 1-32 characters: a lowercase letter, then lowercase letters, digits or '-'",
        )
    if name in RESERVED_NAMES:
        raise HiveError(f"the name {name!r} is reserved", hint="choose another agent name")
    return name


def _agent_from(row: sqlite3.Row) -> AgentRecord:
    data = dict(zip(row.keys(), row, strict=True))
    data["policy"] = json.loads(data["policy"])
    return AgentRecord.model_validate(data)


def _agent_row(record: AgentRecord) -> dict[str, Any]:
    row = record.model_dump()
    row["policy"] = record.policy.model_dump_json()
    return row


def agent_exists(store: Store, name: str) -> bool:
    """Whether an agent called ``name`` exists."""
    return bool(store._query("SELECT 1 FROM hive_agents WHERE name = ?", (name,)))


def insert_agent(
    store: Store, record: AgentRecord, *, also: InTransaction | None = None
) -> AgentRecord:
    """Add a new agent (its name checked), with ``also`` in the same transaction; refuses a
    name that is taken."""
    check_name(record.name)
    try:
        with hive_write(store) as (conn, recorded):
            conn.execute(insert_sql("hive_agents", _AGENT_COLUMNS), _agent_row(record))
            if also is not None:
                also(conn, recorded)
    except sqlite3.IntegrityError as exc:
        raise HiveError(
            f"an agent called {record.name!r} already exists",
            hint=f"choose another name, or `hal agent rm {record.name}` first",
        ) from exc
    return record


def get_agent(store: Store, name: str) -> AgentRecord:
    """The agent called ``name``."""
    rows = store._query("SELECT * FROM hive_agents WHERE name = ?", (name,))
    if not rows:
        raise AgentNotFound(f"no agent called {name!r}", hint=_LIST_HINT)
    return _agent_from(rows[0])


def list_agents(store: Store) -> list[AgentRecord]:
    """Every agent, by name."""
    return [_agent_from(r) for r in store._query("SELECT * FROM hive_agents ORDER BY name")]


def agent_of_task(store: Store, task_id: str) -> AgentRecord | None:
    """The agent whose long-lived task is ``task_id`` (the first by name, as in
    :func:`list_agents`), or None: one read of the agents' table, no record
    built for the others (every run's end asks, nearly always of no agent's task)."""
    rows = store._query(
        "SELECT * FROM hive_agents WHERE task_id = ? ORDER BY name LIMIT 1", (task_id,)
    )
    return _agent_from(rows[0]) if rows else None


def update_agent(
    store: Store, name: str, *, expect: str | None = None, also: InTransaction | None = None,
    **fields: Any,
) -> AgentRecord | None:  # fmt: skip
    """Set fields of an agent, with ``also`` in the same transaction; with ``expect``, only
    if its state is that (compare-and-set). Returns the new record, or None when ``expect``
    did not hold (then nothing is written)."""
    unknown = sorted(set(fields) - set(_AGENT_COLUMNS) | ({"name"} & set(fields)))
    if unknown:
        raise ValueError(f"unknown agent field(s): {', '.join(unknown)}")
    with hive_write(store) as (conn, recorded):
        rows = conn.execute("SELECT * FROM hive_agents WHERE name = ?", (name,)).fetchall()
        if not rows:
            raise AgentNotFound(f"no agent called {name!r}", hint=_LIST_HINT)
        current = _agent_from(rows[0])
        if expect is not None and current.state != expect:
            return None
        fields = {**fields, "updated_at": time.time()}
        updated = AgentRecord.model_validate({**current.model_dump(), **fields})
        row = _agent_row(updated)
        assignments = ", ".join(f"{c} = :{c}" for c in fields)
        conn.execute(
            f"UPDATE hive_agents SET {assignments} WHERE name = :name",
            {**{c: row[c] for c in fields}, "name": name},
        )
        if also is not None:
            also(conn, recorded)
    return updated


def delete_agent(store: Store, name: str, *, also: InTransaction | None = None) -> None:
    """Forget an agent, with ``also`` in the same transaction (its messages stay until
    retention removes them)."""
    with hive_write(store) as (conn, recorded):
        if not conn.execute("DELETE FROM hive_agents WHERE name = ?", (name,)).rowcount:
            raise AgentNotFound(f"no agent called {name!r}", hint=_LIST_HINT)
        if also is not None:
            also(conn, recorded)


# -- hive events -------------------------------------------------------------------------

Publisher = Callable[[HiveEvent], None]
_publisher: Publisher | None = None


def set_publisher(publisher: Publisher | None) -> None:
    """Where recorded hive events go next (the daemon registers its bus's ``publish_hive``)."""
    global _publisher
    _publisher = publisher


def insert_hive_event(conn: sqlite3.Connection, event: HiveEvent) -> HiveEvent:
    """Record ``event`` inside the caller's write transaction; returns it with its gseq
    and time. Call :func:`publish` with it once the transaction has committed."""
    (gseq,) = conn.execute(
        "UPDATE event_counter SET value = value + 1 WHERE id = 1 RETURNING value"
    ).fetchone()
    stamped = event.model_copy(update={"gseq": int(gseq), "ts": event.ts or time.time()})
    conn.execute(
        "INSERT INTO hive_events (gseq, type, ts, agent, body) VALUES (?, ?, ?, ?, ?)",
        (stamped.gseq, stamped.type, stamped.ts, stamped.agent, stamped.model_dump_json()),
    )
    return stamped


def publish(events: list[HiveEvent]) -> None:
    """Hand committed events to the registered publisher; a failing one is only logged."""
    if _publisher is None:
        return
    for event in events:
        try:
            _publisher(event)
        except Exception:
            logger.exception("publishing hive event %s failed", event.type)


@contextmanager
def hive_write(store: Store) -> Iterator[tuple[sqlite3.Connection, list[HiveEvent]]]:
    """A write transaction whose hive events (appended to the list by
    :func:`insert_hive_event`'s callers) are published after the commit."""
    recorded: list[HiveEvent] = []
    with store._write() as conn:
        yield conn, recorded
    publish(recorded)


def record_hive_event(store: Store, event: HiveEvent) -> HiveEvent:
    """Record one hive event (committed) and publish it on the bus; returns it stamped."""
    with hive_write(store) as (conn, recorded):
        recorded.append(insert_hive_event(conn, event))
    return recorded[0]


def hive_events_after(store: Store, gseq: int, *, limit: int = 1000) -> list[HiveEvent]:
    """Hive events with a gseq above ``gseq``, in gseq (commit) order."""
    rows = store._query(
        "SELECT body FROM hive_events WHERE gseq > ? ORDER BY gseq LIMIT ?", (gseq, limit)
    )
    return [parse_hive_event(str(r[0])) for r in rows]
