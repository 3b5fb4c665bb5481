"""Reminders an agent sets for itself: delivered to its mailbox at the time, kept in the
store so a daemon restart loses none (a reminder due while no daemon ran fires at start).

With a file, the reminder's text is written at the due time to that file, named as the agent
sees it inside its sandbox, and the message points at it (the seed's way to leave a longer
note for a later turn). The sandbox path is mapped to the agent's own host directory when
the reminder is set, checked (no ``..``, inside a mount the agent has) and written through
:class:`hal9999.agentfs.AgentDir`: walked down with ``O_NOFOLLOW`` from a directory hal
opened, created fresh and renamed into place, so a symlink the agent planted anywhere on
that path is never followed out of its directory. When the write is refused the text is
delivered in the message instead and the reason said.

Store calls are synchronous: callers on an event loop run these in a worker thread.
"""

from __future__ import annotations

import math
import posixpath
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from hal9999.agentfs import AgentDir
from hal9999.errors import UnsafePath, UsageError
from hal9999.events.hive import ReminderDue, ReminderSet
from hal9999.hive import broker
from hal9999.hive.store import hive_write, insert_hive_event
from hal9999.hive.threads import (
    Reminder,
    check_participant,
    check_text,
    new_id,
    notify,
    notify_deadline,
    reminder_of,
    select_rows,
)
from hal9999.store import Store

MAX_AHEAD_S = 365 * 86400.0
"""The furthest ahead a reminder may be set."""
MAX_PENDING = 200
"""Pending reminders one agent may hold (a looping agent must not fill the store)."""
PAST_GRACE_S = 60.0
"""How far in the past ``at`` may be (a clock a little behind); it then fires at once."""

Mount = tuple[str, Path]
"""A directory of the agent's sandbox (its absolute path inside) and the host directory
behind it, which hal made and the agent cannot replace."""


def resolve_file(path: str, mounts: Sequence[Mount]) -> tuple[Path, str]:
    """The host directory and the checked relative path of ``path``, a file as the agent
    names it inside its sandbox (relative paths are taken from its first mount)."""
    if not path or "\x00" in path or any(ord(c) < 0x20 for c in path) or len(path) > 1024:
        raise UsageError(f"the reminder file {path!r} is not a usable path")
    if not mounts:
        raise UsageError("a reminder file needs the agent's workspace, and this agent has none")
    full = path if path.startswith("/") else posixpath.join(mounts[0][0], path)
    if ".." in full.split("/"):
        raise UsageError(f"the reminder file {path!r} may not contain '..'")
    normal = posixpath.normpath(full)
    best: Mount | None = None
    for inside, host in mounts:
        inside = posixpath.normpath(inside)
        if normal.startswith(inside.rstrip("/") + "/") and (
            best is None or len(inside) > len(best[0])
        ):
            best = (inside, host)
    if best is None:
        places = ", ".join(inside for inside, _ in mounts)
        raise UsageError(
            f"the reminder file {path!r} is not inside your workspace",
            hint=f"name a file under {places}",
        )
    return best[1], normal[len(best[0].rstrip("/")) + 1 :]


def _check_rate(conn: sqlite3.Connection, agent: str, now: float) -> None:
    """HiveLimited when ``agent`` set the broker's ``rate_per_minute`` reminders in the last
    60 s. A reminder is a message to itself that hal sends (past the broker's rate limit),
    and one due at once leaves the pending count as soon as it fires: without this, an agent
    looping on ``remind(in_s=0.001)`` grew its mailbox and the store without bound."""
    broker.check_minute_rate(
        conn, "hive_reminders", "agent", agent, now, did="set {n} reminders",
        hint="wait a minute; put what you want to be reminded of into fewer reminders",
    )  # fmt: skip


def remind(
    store: Store,
    *,
    agent: str,
    text: str,
    at: float | None = None,
    in_s: float | None = None,
    file: str | None = None,
    mounts: Sequence[Mount] = (),
) -> Reminder:
    """Set a reminder for ``agent`` at ``at`` (unix time) or in ``in_s`` seconds."""
    check_participant(store, agent, "the agent")
    if agent == broker.OPERATOR:
        raise UsageError("reminders are for agents", hint="the operator has a calendar")
    check_text(text, "reminder text")
    now = time.time()
    if (at is None) == (in_s is None):
        raise UsageError("give the reminder's time as either at or in, not both or neither")
    due = at if at is not None else now + (in_s or 0.0)
    if not math.isfinite(due) or (in_s is not None and in_s <= 0) or due < now - PAST_GRACE_S:
        raise UsageError("the reminder's time is in the past", hint="give a time ahead")
    if due > now + MAX_AHEAD_S:
        raise UsageError("a reminder may be set at most a year ahead")
    root = rel = None
    if file is not None:
        host, rel = resolve_file(file, mounts)
        root = str(host)
    reminder = Reminder(
        id=new_id("r"), agent=agent, body=text, due=due, file_shown=file, file_root=root,
        file_rel=rel, state="pending", created=now,
    )  # fmt: skip
    with hive_write(store) as (conn, recorded):
        (pending,) = conn.execute(
            "SELECT COUNT(*) FROM hive_reminders WHERE agent = ? AND state = 'pending'", (agent,)
        ).fetchone()
        if pending >= MAX_PENDING:
            raise UsageError(
                f"{agent} already has {pending} pending reminders", hint="let some fire first"
            )
        _check_rate(conn, agent, now)
        conn.execute(
            "INSERT INTO hive_reminders (id, agent, body, due, file_shown, file_root, file_rel,"
            " state, created) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (reminder.id, agent, text, due, file, root, rel, now),
        )
        event = ReminderSet(agent=agent, reminder_id=reminder.id, due=due)
        recorded.append(insert_hive_event(conn, event))
    notify_deadline()
    return reminder


def list_reminders(
    store: Store, agent: str | None = None, *, pending_only: bool = True
) -> list[Reminder]:
    """Reminders by due time: of one agent when given; pending only by default."""
    where = {"agent": agent, "state": "pending" if pending_only else None}
    return [reminder_of(row) for row in select_rows(store, "hive_reminders", where, "due")]


def _write_file(reminder: Reminder) -> str | None:
    """Write the reminder's text to its file; the reason it could not, or None."""
    assert reminder.file_root is not None and reminder.file_rel is not None
    try:
        with AgentDir.open(Path(reminder.file_root), label=reminder.file_shown or "") as root:
            parent = posixpath.dirname(reminder.file_rel)
            if parent:
                root.mkdir(parent)
            root.write_atomic(reminder.file_rel, reminder.body.encode(), mode=0o644)
    except UnsafePath as exc:
        return exc.message
    except OSError as exc:
        return f"cannot write {reminder.file_shown}: {exc.strerror or exc}"
    return None


def _deliver(store: Store, reminder: Reminder) -> Reminder | None:
    note = _write_file(reminder) if reminder.file_rel is not None else None
    if reminder.file_rel is not None and note is None:
        body = (f"Reminder {reminder.id}: the note you left for now is in "
                f"{reminder.file_shown} ({len(reminder.body.encode())} bytes).")  # fmt: skip
    else:
        body = f"Reminder {reminder.id}: {reminder.body}"
        if note is not None:
            body += f"\n(hal did not write it to {reminder.file_shown}: {note})"
    # Delivered first, then marked: a crash in between neither loses the reminder nor, as
    # notify sends a thread's notice once, repeats it.
    # An agent removed since gets nothing; the reminder is done all the same.
    if not notify(store, recipient=reminder.agent, body=body, kind="reminder", ref=reminder.id):
        note = note or f"not delivered: {reminder.agent} is gone"
    event = ReminderDue(agent=reminder.agent, reminder_id=reminder.id)
    with hive_write(store) as (conn, recorded):
        changed = conn.execute(
            "UPDATE hive_reminders SET state = 'delivered', delivered = ?, note = ?"
            " WHERE id = ? AND state = 'pending'",
            (time.time(), note, reminder.id),
        ).rowcount
        if changed == 1:
            recorded.append(insert_hive_event(conn, event))
    if changed != 1:
        return None
    return reminder.model_copy(update={"state": "delivered", "note": note})


def fire_due(store: Store, now: float | None = None) -> list[Reminder]:
    """Deliver every pending reminder that is due; returns them."""
    now = time.time() if now is None else now
    rows = store._query(
        "SELECT * FROM hive_reminders WHERE state = 'pending' AND due <= ? ORDER BY due", (now,)
    )
    fired = [_deliver(store, reminder_of(row)) for row in rows]
    return [reminder for reminder in fired if reminder is not None]


def drop_all(store: Store, agent: str) -> int:
    """Cancel the pending reminders of an agent being removed."""
    with store._write() as conn:
        return int(
            conn.execute(
                "UPDATE hive_reminders SET state = 'delivered', delivered = ?, note = ?"
                " WHERE agent = ? AND state = 'pending'",
                (time.time(), "cancelled: the agent was removed", agent),
            ).rowcount
        )
