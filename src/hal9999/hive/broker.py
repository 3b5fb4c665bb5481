"""The broker: durable messages between the operator, hal and the hive's agents.

A message is committed (SQLite, WAL) before :func:`send` returns, with its
``message_sent`` event in the same transaction; then the recipient's turn loop is woken.
States only move forward: ``sent`` (committed) -> ``delivered`` (in the recipient's mailbox
ledger, see :mod:`hal9999.hive.turns`, or taken by its running turn: :func:`take`) ->
``read`` (the turn that got it ended, or the operator read it). Nothing that is not
``read`` is ever removed by retention.

Guards against a hive that feeds itself: a per-agent send rate limit, and a ping-pong
detector that stops two agents that keep waking each other (and tells the operator).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hal9999.errors import AgentNotFound, HiveError, HiveLimited, NotFoundError
from hal9999.events.hive import (
    AgentState,
    HiveEvent,
    HiveGuard,
    MessageDelivered,
    MessageDropped,
    MessageRead,
    MessageSent,
)
from hal9999.hive import unread
from hal9999.hive.store import (
    agent_exists,
    get_agent,
    hive_write,
    insert_hive_event,
    record_hive_event,
)
from hal9999.store import Store

OPERATOR = "operator"
"""The reserved recipient/sender name of the human."""
SYSTEM = "hal"
"""Sender of system notices (crash, approval results, reminders, expiries)."""

MessageKind = Literal["message", "question", "answer", "approval", "reminder", "notice"]
MessageState = Literal["sent", "delivered", "read"]
_ORDER: dict[str, int] = {"sent": 0, "delivered": 1, "read": 2}

MAX_BODY_CHARS = 64 * 1024
"""The longest message body (it lands in a prompt; a file belongs in the workspace)."""


class Message(BaseModel):
    """One message as the broker holds it."""

    model_config = ConfigDict(frozen=True)

    id: str
    sender: str
    recipient: str
    kind: MessageKind
    body: str
    ref: str | None = None
    """What it answers or refers to: a question, approval or reminder id."""
    state: MessageState
    created: float


@dataclass
class BrokerLimits:
    """The broker's guards (set by the daemon from ``[hive]`` settings)."""

    rate_per_minute: int = 30
    """Messages one agent may send in any 60 s (0: no limit)."""
    loop_messages: int = 24
    """Messages between one pair of agents, both ways, within ``loop_window_s`` and without
    the operator writing to either, that count as a ping-pong loop (0: never)."""
    loop_window_s: float = 600.0
    unread_to_operator_chars: int = 4 << 20
    """Characters of one agent's messages to the operator not read yet past which its next
    one is refused (0: no limit). Retention never removes unread mail, and the rate limit
    alone lets an agent send gigabytes a day that nobody reads."""
    unread_to_agents_chars: int = 4 << 20
    """The same for one agent's messages to agents, all of them together: a stopped agent
    takes no turn, so what is sent to it stays unread, however much (0: no limit)."""


limits = BrokerLimits()
"""The limits :func:`send` applies (module-wide: one broker per process)."""

Waker = Callable[[str], None]
_waker: Waker | None = None
_waker_lock = threading.Lock()


def set_waker(waker: Waker | None) -> None:
    """Register who is told a recipient's name after each committed message (the daemon's
    turn loop; it must be thread-safe: :func:`send` runs in any thread)."""
    global _waker
    with _waker_lock:
        _waker = waker


def wake(name: str) -> None:
    """Tell the registered waker that ``name`` has a committed message."""
    with _waker_lock:
        waker = _waker
    if waker is not None:
        waker(name)


def _new_id() -> str:
    # Time first, so ids sort roughly by creation; random after, so they are unguessable.
    return f"m{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def _is_agent(name: str) -> bool:
    return name not in (OPERATOR, SYSTEM)


def _check_parties(store: Store, sender: str, recipient: str) -> None:
    if recipient == SYSTEM:
        raise HiveError(f"{SYSTEM!r} receives no messages", hint="send to an agent or the operator")
    if sender == recipient:
        raise HiveError(f"{sender!r} cannot send a message to itself")
    for name, role in ((sender, "sender"), (recipient, "recipient")):
        if _is_agent(name) and not agent_exists(store, name):
            raise AgentNotFound(
                f"no agent called {name!r} (the {role})", hint="list agents with `hal agent list`"
            )


def send(
    store: Store,
    *,
    sender: str,
    recipient: str,
    body: str,
    kind: MessageKind = "message",
    ref: str | None = None,
    key: str | None = None,
) -> Message:
    """Commit a message (durable before this returns), publish ``message_sent`` and wake
    the recipient. Refuses unknown parties, empty or oversized bodies, and sends that a
    guard stops (:class:`HiveLimited`).

    ``key`` (the sender's own, one per send) makes a send idempotent: the same key again
    returns the message committed the first time instead of a second one (a client whose
    connection dropped after the commit retries with it)."""
    if key is not None:
        _check_key(key)
        found = _keyed(store._query(_BY_KEY, (sender, key)))
        if found is not None:
            return _same_send(found, recipient, body, key)
    message = prepare(store, sender=sender, recipient=recipient, body=body, kind=kind, ref=ref)
    with hive_write(store) as (conn, recorded):
        found = _keyed(conn.execute(_BY_KEY, (sender, key)).fetchall()) if key else None
        if found is None:
            commit(conn, recorded, message, key)
    if found is not None:  # a send with the key committed meanwhile (a concurrent retry)
        return _same_send(found, recipient, body, str(key))
    wake(recipient)
    return message


SEND_KEY_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""What a send key looks like (the client makes one at random per send)."""


def _check_key(key: str) -> None:
    if not SEND_KEY_RE.fullmatch(key):
        raise HiveError(
            "the send key must be 8-64 letters, digits, '-' or '_'",
            hint="leave it out, or make one per send (e.g. 32 random hex digits)",
        )


def _keyed(rows: list[sqlite3.Row]) -> Message | None:
    """The message of a ``_BY_KEY`` query's rows, if any."""
    return _message(rows[0]) if rows else None


def _same_send(found: Message, recipient: str, body: str, key: str) -> Message:
    """The message a key was first sent with, when this send is that one again."""
    if found.recipient != recipient or found.body != body:
        raise HiveError(
            f"the send key {key} was used for another message ({found.id})",
            hint="make a new key for each message",
        )
    return found


def prepare(
    store: Store,
    *,
    sender: str,
    recipient: str,
    body: str,
    kind: MessageKind = "message",
    ref: str | None = None,
) -> Message:
    """A message checked as :func:`send` checks it, not committed yet: a caller whose
    message is the outcome of its own change (an answer, a thread's notice) :func:`commit`s
    it in that change's transaction, so a crash never keeps one without the other, then
    :func:`wake`s the recipient."""
    _check_parties(store, sender, recipient)
    if not body.strip():
        raise HiveError("the message is empty", hint="give the text to send")
    if len(body) > MAX_BODY_CHARS:
        raise HiveError(
            f"the message has {len(body)} characters, more than {MAX_BODY_CHARS}",
            hint="put long text in a file of the workspace and send its path",
        )
    now = time.time()
    message = Message(
        id=_new_id(), sender=sender, recipient=recipient, kind=kind, body=body, ref=ref,
        state="sent", created=now,
    )  # fmt: skip
    if _is_agent(sender):
        _check_rate(store, sender, now)
        if _is_agent(recipient):
            _check_loop(store, sender, recipient, now)
        to_agent = _is_agent(recipient)
        cap = limits.unread_to_agents_chars if to_agent else limits.unread_to_operator_chars
        unread.check(store, sender, to_agent=to_agent, chars=len(body), cap=cap)
    return message


def commit(
    conn: sqlite3.Connection, recorded: list[HiveEvent], message: Message, key: str | None = None
) -> None:
    """Insert a :func:`prepare`d message (with its sender's send ``key``) and its
    ``message_sent`` event in the caller's :func:`~hal9999.hive.store.hive_write`
    transaction."""
    sender, recipient = message.sender, message.recipient
    conn.execute(
        "INSERT INTO hive_messages (id, sender, recipient, kind, body, ref, state, created,"
        " send_key) VALUES (?, ?, ?, ?, ?, ?, 'sent', ?, ?)",
        (message.id, sender, recipient, message.kind, message.body, message.ref,
         message.created, key),
    )  # fmt: skip
    agent = recipient if _is_agent(recipient) else sender if _is_agent(sender) else None
    event = MessageSent(
        agent=agent, id=message.id, sender=sender, recipient=recipient, kind=message.kind,
        ref=message.ref, chars=len(message.body),
    )  # fmt: skip
    recorded.append(insert_hive_event(conn, event))


def _count(store: Store, sql: str, params: tuple[object, ...]) -> int:
    return int(store._query(sql, params)[0][0])


def check_minute_rate(
    conn: sqlite3.Connection, table: str, column: str, who: str, now: float, *, did: str,
    hint: str,
) -> None:  # fmt: skip
    """HiveLimited when ``who`` made ``rate_per_minute`` rows of ``table`` (``column`` names
    them) in the last 60 s; ``did`` says what, with ``{n}`` for the count (``asked {n}
    questions``). For what an agent makes past the broker's own rate limit (questions,
    reminders). ``table`` and ``column`` are hal's own names, never input."""
    rate = limits.rate_per_minute
    if rate <= 0:
        return
    (recent,) = conn.execute(
        f"SELECT COUNT(*) FROM {table} WHERE {column} = ? AND created > ?", (who, now - 60.0)
    ).fetchone()
    if recent >= rate:
        raise HiveLimited(
            f"{who} {did.format(n=recent)} in the last minute (limit {rate})", hint=hint
        )


def _check_rate(store: Store, sender: str, now: float) -> None:
    if limits.rate_per_minute <= 0:
        return
    sent = _count(
        store,
        "SELECT COUNT(*) FROM hive_messages WHERE sender = ? AND created > ?",
        (sender, now - 60.0),
    )
    if sent >= limits.rate_per_minute:
        # Once a minute: an agent retrying in a loop must not grow the events instead.
        told = store._query(
            "SELECT 1 FROM hive_events WHERE ts > ? AND type = 'hive_guard' AND agent = ?"
            ' AND body LIKE \'%"guard":"rate_limit"%\' LIMIT 1',
            (now - 60.0, sender),
        )
        if not told:
            _guard(store, "rate_limit", sender, f"{sender} sent {sent} messages in the last minute")
        raise HiveLimited(
            f"agent {sender!r} sent {sent} messages in the last minute (limit"
            f" {limits.rate_per_minute})",
            hint="wait a minute; batch what you have to say into fewer messages",
        )


def _loop_share() -> int:
    """The fewest messages each of a pair must have sent for their exchange to be a loop."""
    return max(1, limits.loop_messages // 4)


def _check_loop(store: Store, a: str, b: str, now: float) -> None:
    """Stop the agents that keep a message loop going: of a pair messaging each other with
    nobody else involved, each that sent at least half as many messages as it got."""
    if limits.loop_messages <= 0:
        return
    # From the operator's last start of either: the messages that stopped them are not
    # counted again at the first one after `hal agent start`.
    restarted = store._query(
        "SELECT MAX(loop_since) FROM hive_agents WHERE name IN (?, ?)", (a, b)
    )[0][0]
    since = max(now - limits.loop_window_s, restarted or 0.0)
    operator_wrote = _count(
        store,
        "SELECT COUNT(*) FROM hive_messages WHERE sender = ? AND recipient IN (?, ?)"
        " AND created > ?",
        (OPERATOR, a, b, since),
    )
    if operator_wrote:
        return
    sql = "SELECT COUNT(*) FROM hive_messages WHERE created > ? AND sender = ? AND recipient = ?"
    sent, replied = _count(store, sql, (since, a, b)) + 1, _count(store, sql, (since, b, a))
    # A loop goes both ways: a one-way flood (rate-limited already) stopped its target too,
    # so any agent could stop any other, which only the operator's approval may do.
    if sent + replied < limits.loop_messages or min(sent, replied) < _loop_share():
        return
    # A side is stopped when it sent at least half as many as it got: both, in a ping-pong;
    # stopping both at the share let an agent stop any peer (the manager too, a stop that
    # takes the operator's approval) by flooding it until it had replied that often.
    looping = [name for name, own, got in ((a, sent, replied), (b, replied, sent))
               if 2 * own >= got]  # fmt: skip
    who = f"stopped {looping[0]}" if len(looping) == 1 else "stopped both"
    detail = (
        f"{a} and {b} exchanged {sent + replied} messages ({sent} from {a}) within"
        f" {limits.loop_window_s:g} s with no operator message: {who} as a message loop"
    )
    fresh = [name for name in looping if get_agent(store, name).state != "stopped"]
    if fresh:  # once: not again at each later send to (or by) an agent it stopped
        start = " / ".join(f"`hal agent start {name}`" for name in fresh)
        notice = prepare(
            store, sender=SYSTEM, recipient=OPERATOR, kind="notice",
            body=f"{detail}. Start {'it' if len(fresh) == 1 else 'them'} again with {start}.",
        )  # fmt: skip
        # The stops, the guard's event and the operator's notice in one transaction: a
        # process killed between separate commits left one stopped and the operator not told.
        with hive_write(store) as (conn, recorded):
            for name in fresh:
                _stop(conn, recorded, name, "message loop (hive guard)")
            event = HiveGuard(agent=a, guard="loop", detail=detail)
            recorded.append(insert_hive_event(conn, event))
            commit(conn, recorded, notice)
        wake(OPERATOR)
    if a in looping:  # the other's message goes on, to an agent that waits stopped
        raise HiveLimited(detail, hint=f"the operator can start it again: `hal agent start {a}`")


def _stop(conn: sqlite3.Connection, recorded: list[HiveEvent], name: str, detail: str) -> None:
    """Stop agent ``name`` (with its ``agent_state`` event) in the caller's transaction."""
    row = conn.execute("SELECT state FROM hive_agents WHERE name = ?", (name,)).fetchone()
    if row is None:
        return
    conn.execute(
        "UPDATE hive_agents SET state = 'stopped', detail = ?, updated_at = ? WHERE name = ?",
        (detail, time.time(), name),
    )
    event = AgentState(agent=name, state="stopped", previous=str(row[0]), detail=detail)
    recorded.append(insert_hive_event(conn, event))


def _guard(
    store: Store, guard: Literal["budget", "rate_limit", "loop"], agent: str, detail: str
) -> None:
    record_hive_event(store, HiveGuard(agent=agent, guard=guard, detail=detail))


def _message(row: sqlite3.Row) -> Message:
    return Message.model_validate(dict(zip(row.keys(), row, strict=True)))


_SELECT = "SELECT id, sender, recipient, kind, body, ref, state, created FROM hive_messages"
_BY_KEY = f"{_SELECT} WHERE sender = ? AND send_key = ?"


def inbox(
    store: Store, recipient: str, *, include_read: bool = False, limit: int = 100
) -> list[Message]:
    """A recipient's messages in arrival order: the oldest ``limit`` not read yet, or, with
    ``include_read``, the newest ``limit`` of all."""
    if include_read:
        rows = store._query(
            f"SELECT * FROM ({_SELECT} WHERE recipient = ? ORDER BY rowid DESC LIMIT ?)"
            " ORDER BY created, id",
            (recipient, limit),
        )
    else:
        rows = store._query(
            f"{_SELECT} WHERE recipient = ? AND state != 'read' ORDER BY rowid LIMIT ?",
            (recipient, limit),
        )
    return [_message(r) for r in rows]


def get_message(store: Store, message_id: str) -> Message:
    """One message by id."""
    rows = store._query(f"{_SELECT} WHERE id = ?", (message_id,))
    if not rows:
        raise HiveError(f"no message {message_id!r}")
    return _message(rows[0])


def mark(store: Store, ids: Sequence[str], state: Literal["delivered", "read"]) -> None:
    """Move messages forward to ``state`` (never back); publishes which ones moved."""
    if not ids:
        return
    with hive_write(store) as (conn, recorded):
        _mark(conn, recorded, ids, state)


def _mark(
    conn: sqlite3.Connection, recorded: list[HiveEvent], ids: Sequence[str],
    state: Literal["delivered", "read"],
) -> list[str]:  # fmt: skip
    """Move ``ids`` forward to ``state`` in the open transaction; the ids it moved."""
    now = time.time()
    column = "delivered_at" if state == "delivered" else "read_at"
    lower = [s for s, n in _ORDER.items() if n < _ORDER[state]]
    by_agent: dict[str | None, list[str]] = {}
    for message_id in dict.fromkeys(ids):
        row = conn.execute(
            f"UPDATE hive_messages SET state = ?, {column} = ?"
            f" WHERE id = ? AND state IN ({', '.join('?' * len(lower))}) RETURNING recipient",
            (state, now, message_id, *lower),
        ).fetchone()
        if row is not None:
            recipient = str(row[0])
            by_agent.setdefault(recipient if _is_agent(recipient) else None, []).append(message_id)
    for agent, moved in by_agent.items():
        event: HiveEvent = (
            MessageDelivered(agent=agent, ids=moved)
            if state == "delivered"
            else MessageRead(agent=agent, ids=moved)
        )
        recorded.append(insert_hive_event(conn, event))
    return [message_id for moved in by_agent.values() for message_id in moved]


_UNREAD = f"{_SELECT} WHERE id = ? AND recipient = ? AND state != 'read'"


def _not_in(agent: str, message_id: str) -> NotFoundError:
    return NotFoundError(
        f"no unread message {message_id!r} in {agent}'s mailbox",
        hint=f"list it with `hal msg inbox {agent}`",
    )


def unread_message(store: Store, agent: str, message_id: str) -> Message:
    """A message in ``agent``'s mailbox not read yet (else a NotFoundError)."""
    rows = store._query(_UNREAD, (message_id, agent))
    if not rows:
        raise _not_in(agent, message_id)
    return _message(rows[0])


def drop(store: Store, agent: str, message_id: str) -> Message:
    """Take a message ``agent`` has not read out of its mailbox (deleted, with a
    ``message_dropped`` event): no turn gets it, the one after a stop and start included.
    A message that is not there unread is a NotFoundError."""
    with hive_write(store) as (conn, recorded):
        row = conn.execute(_UNREAD, (message_id, agent)).fetchone()
        if row is None:
            raise _not_in(agent, message_id)
        conn.execute("DELETE FROM hive_messages WHERE id = ?", (message_id,))
        recorded.append(insert_hive_event(conn, MessageDropped(agent=agent, ids=[message_id])))
    return _message(row)


def retire(conn: sqlite3.Connection, recorded: list[HiveEvent], agent: str) -> None:
    """In the transaction that removes ``agent``: its mailbox and its turns go with it, so a
    new agent given the name starts with none of its mail (its first turn would get what
    was unread), its history or its statistics. The mail it never read is ``read`` first,
    for whoever follows the hive's events; what it sent others stays theirs."""
    rows = conn.execute(
        "SELECT id FROM hive_messages WHERE recipient = ? AND state != 'read'", (agent,)
    ).fetchall()
    _mark(conn, recorded, [str(row[0]) for row in rows], "read")
    conn.execute("DELETE FROM hive_messages WHERE recipient = ?", (agent,))
    conn.execute("DELETE FROM hive_turns WHERE agent = ?", (agent,))


def take(store: Store, agent: str, ids: Sequence[str]) -> list[str]:
    """Messages an agent took through its tools (``inbox``, ``recv``) during a turn: marked
    ``delivered`` and added to its open turn's messages, in one transaction, so the turn's
    end marks them ``read`` when it ends on its own; a turn that crashes (its sandbox killed
    before the agent acted on them) leaves them to the next turn's prompt instead of losing
    them. With no turn open (nothing would finish them) they are ``read`` at once. Returns
    the ids this call moved: a message two calls read as new at once goes to one of them."""
    if not ids:
        return []
    with hive_write(store) as (conn, recorded):
        turn = conn.execute(
            "SELECT id, messages FROM hive_turns WHERE agent = ? AND ended_at IS NULL"
            " ORDER BY id DESC LIMIT 1",
            (agent,),
        ).fetchone()
        if turn is None:
            return _mark(conn, recorded, ids, "read")
        moved = _mark(conn, recorded, ids, "delivered")
        messages = list(dict.fromkeys([*json.loads(turn["messages"]), *moved]))
        conn.execute(
            "UPDATE hive_turns SET messages = ? WHERE id = ?", (json.dumps(messages), turn["id"])
        )
        return moved
