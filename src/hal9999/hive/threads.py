"""The hive's open threads: approvals, questions and reminders as records, and the query of
what is still open (pending approvals and unanswered questions), hive-wide or per agent.

The three kinds live in their own tables (migration 5); :mod:`~hal9999.hive.approvals`,
:mod:`~hal9999.hive.questions` and :mod:`~hal9999.hive.reminders` change them, each change
guarded compare-and-set on the row's state, so two processes resolving the same thread at
once cannot both win.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hal9999.errors import HalError, ThreadNotFound, UsageError
from hal9999.hive import broker
from hal9999.hive.broker import OPERATOR, SYSTEM, MessageKind
from hal9999.hive.store import NAME_RE, agent_exists
from hal9999.store import Store

logger = logging.getLogger(__name__)

ApprovalKind = Literal["spawn", "apply", "destroy", "tool"]
ApprovalState = Literal["pending", "approved", "denied", "expired"]
QuestionState = Literal["open", "answered", "expired"]
ReminderState = Literal["pending", "delivered"]

MAX_TEXT = 60 * 1024
"""The longest question, answer, reason or reminder text kept (a mailbox is not a file store;
what hal adds around it must still fit the broker's limit on a message)."""


class Approval(BaseModel):
    """One proposal in the approval queue."""

    model_config = ConfigDict(frozen=True)
    id: str
    kind: ApprovalKind
    proposer: str
    title: str
    payload: dict[str, Any]
    """What was proposed: for ``apply`` the repository, branch, target and the pinned commits."""
    state: ApprovalState
    reason: str | None = None
    result: dict[str, Any] | None = None
    """What approving did (for ``apply``: the new commit of the target branch)."""
    created: float
    expires: float | None = None
    resolved: float | None = None
    resolved_by: str | None = None


class Question(BaseModel):
    """A question to the operator or to another agent."""

    model_config = ConfigDict(frozen=True)
    id: str
    asker: str
    target: str
    question: str
    state: QuestionState
    answer: str | None = None
    answerer: str | None = None
    """Who answered: the target, the operator (overriding), or ``hal`` when it expired."""
    created: float
    expires: float | None = None
    answered: float | None = None


class Reminder(BaseModel):
    """A reminder an agent set for itself."""

    model_config = ConfigDict(frozen=True)
    id: str
    agent: str
    body: str
    due: float
    file_shown: str | None = None
    """The file as the agent named it (a path inside its sandbox)."""
    file_root: str | None = None
    file_rel: str | None = None
    state: ReminderState
    created: float
    delivered: float | None = None
    note: str | None = None
    """What went wrong writing the file, when something did (the reminder is delivered anyway)."""


class OpenThreads(BaseModel):
    """What is still open: proposals waiting for the operator, questions waiting for answers."""

    model_config = ConfigDict(frozen=True)
    approvals: list[Approval]
    questions: list[Question]

    @property
    def count(self) -> int:
        """How many threads are open."""
        return len(self.approvals) + len(self.questions)


_deadline_waker: Callable[[], None] | None = None


def set_deadline_waker(waker: Callable[[], None] | None) -> None:
    """Register what wakes the daemon's deadline loop when a new deadline is stored here."""
    global _deadline_waker
    _deadline_waker = waker


def notify_deadline() -> None:
    """Tell the deadline loop (when this process runs one) that something new waits on the
    clock; other processes' inserts reach it through its poll."""
    if _deadline_waker is not None:
        _deadline_waker()


def new_id(prefix: str) -> str:
    """A fresh id: ``a-`` approvals, ``q-`` questions, ``r-`` reminders."""
    return f"{prefix}-{secrets.token_hex(5)}"


def check_text(text: str, what: str) -> str:
    """``text`` if it is non-empty and not too long for a mailbox."""
    if not text.strip():
        raise UsageError(f"the {what} is empty", hint=f"give the {what} as text")
    if len(text) > MAX_TEXT:
        raise UsageError(
            f"the {what} is {len(text)} characters, over the limit of {MAX_TEXT}",
            hint="put long material in a file of your workspace and refer to it",
        )
    return text


def check_participant(store: Store, name: str, what: str) -> str:
    """``name`` if it is the operator or an existing agent."""
    if name == OPERATOR:
        return name
    if name == SYSTEM or not NAME_RE.fullmatch(name) or not agent_exists(store, name):
        raise UsageError(
            f"{what} {name!r} is neither {OPERATOR!r} nor an agent of the hive",
            hint="list the agents with `hal agent list`",
        )
    return name


def agent_or_none(name: str) -> str | None:
    """``name`` when it is an agent's (events name the agent they are about), else None."""
    return None if name in (OPERATOR, SYSTEM) else name


def notify(store: Store, *, recipient: str, body: str, kind: MessageKind, ref: str) -> bool:
    """Send hal's notice of a thread's outcome; a recipient that is gone (an agent removed
    since) is logged, never an error: the outcome itself is already committed.

    A thread has one outcome, so its notice goes once: callers send it before they mark the
    thread done, and a notice already in the store (sent by a daemon killed before its mark)
    is not sent again when the next one finishes the job (only the daemon's one deadline
    loop sends these, so the check cannot race another sender)."""
    sent = store._query(
        "SELECT 1 FROM hive_messages WHERE recipient = ? AND sender = ? AND kind = ? AND ref = ?"
        " LIMIT 1",
        (recipient, SYSTEM, kind, ref),
    )
    if sent:
        return True
    try:
        broker.send(store, sender=SYSTEM, recipient=recipient, body=body, kind=kind, ref=ref)
    except HalError as exc:
        logger.warning("could not tell %s about %s: %s", recipient, ref, exc)
        return False
    return True


def notice(
    store: Store, *, recipient: str, body: str, kind: MessageKind, ref: str
) -> broker.Message | None:
    """hal's notice of a thread's outcome, checked, for the caller to commit in the same
    transaction as the outcome (:func:`broker.commit`): a crash keeps both or neither. None
    when the recipient is gone (an agent removed since: logged, the outcome stands)."""
    try:
        return broker.prepare(store, sender=SYSTEM, recipient=recipient, body=body, kind=kind,
                              ref=ref)  # fmt: skip
    except HalError as exc:
        logger.warning("could not tell %s about %s: %s", recipient, ref, exc)
        return None


_TABLES = {"approval": "hive_approvals", "question": "hive_questions", "reminder": "hive_reminders"}
_LIST = {
    "approval": "hal approvals list",
    "question": "hal questions list",
    "reminder": "hal agent show",
}
_WHOSE = {"target": "asked of", "proposer": "proposed by"}


def find_row(
    store: Store,
    what: Literal["approval", "question", "reminder"],
    key: str,
    *,
    target: str | None = None,
    proposer: str | None = None,
) -> Any:
    """The row whose id is ``key`` or, failing that, the only one whose id starts with it;
    with ``target``, among the questions asked of that agent only, with ``proposer``, among
    the proposals of that agent only (an agent guessing prefixes learned others' ids, and
    whether a prefix matched any, from the answers)."""
    table = _TABLES[what]
    key = key.strip()
    of = [(column, value) for column, value in (("target", target), ("proposer", proposer))
          if value is not None]  # fmt: skip
    only = "".join(f" AND {column} = ?" for column, _ in of)
    args = tuple(value for _, value in of)
    rows = store._query(f"SELECT * FROM {table} WHERE id = ?{only}", (key, *args)) if key else []
    if not rows and key:
        rows = store._query(
            f"SELECT * FROM {table} WHERE substr(id, 1, ?) = ?{only} LIMIT 2",
            (len(key), key, *args),
        )
    whose = "".join(f" {_WHOSE[column]} {value}" for column, value in of)
    if len(rows) > 1:  # "'a-' matches several approval", and no word of what to do
        raise ThreadNotFound(
            f"{key!r} matches several {what}s{whose}",
            hint=f"give more of the id; see `{_LIST[what]}`", id=key, kind=what,
        )  # fmt: skip
    if not rows:
        raise ThreadNotFound(
            f"{key!r} matches no {what}{whose}", hint=f"see `{_LIST[what]}`", id=key, kind=what
        )
    return rows[0]


def approval_of(row: sqlite3.Row) -> Approval:
    """An :class:`Approval` from its row."""
    data = dict(row)
    data["payload"] = json.loads(data["payload"])
    data["result"] = json.loads(data["result"]) if data["result"] else None
    return Approval.model_validate(data)


def question_of(row: sqlite3.Row) -> Question:
    """A :class:`Question` from its row."""
    return Question.model_validate(dict(row))


def reminder_of(row: sqlite3.Row) -> Reminder:
    """A :class:`Reminder` from its row."""
    return Reminder.model_validate(dict(row))


def open_threads(store: Store, agent: str | None = None) -> OpenThreads:
    """Pending approvals and unanswered questions: hive-wide, or those ``agent`` is part of
    (its own proposals, the questions it asked and those waiting for its answer)."""
    if agent is None:
        approvals = store._query(
            "SELECT * FROM hive_approvals WHERE state = 'pending' ORDER BY created"
        )
        questions = store._query(
            "SELECT * FROM hive_questions WHERE state = 'open' ORDER BY created"
        )
    else:
        approvals = store._query(
            "SELECT * FROM hive_approvals WHERE state = 'pending' AND proposer = ?"
            " ORDER BY created",
            (agent,),
        )
        questions = store._query(
            "SELECT * FROM hive_questions WHERE state = 'open' AND (asker = ? OR target = ?)"
            " ORDER BY created",
            (agent, agent),
        )
    return OpenThreads(
        approvals=[approval_of(row) for row in approvals],
        questions=[question_of(row) for row in questions],
    )


def open_count(store: Store, agent: str) -> int:
    """How many threads ``agent`` is part of are open (what turn statistics record)."""
    row = store._query(
        "SELECT (SELECT COUNT(*) FROM hive_approvals WHERE state = 'pending' AND proposer = ?)"
        " + (SELECT COUNT(*) FROM hive_questions WHERE state = 'open'"
        " AND (asker = ? OR target = ?))",
        (agent, agent, agent),
    )[0]
    return int(row[0])


def close_for_removed(store: Store, agent: str, *, spare: str | None = None) -> int:
    """Close every open thread of an agent being removed (before its record goes): its
    proposals expire (but ``spare``, the one being approved to remove it), questions it
    asked or was asked close (askers get the sentinel answer), its reminders are cancelled.
    Returns how many threads closed."""
    from hal9999.hive import approvals, questions, reminders  # they build on this module

    closed = approvals.withdraw_all(store, agent, spare=spare) + questions.close_all(store, agent)
    return closed + reminders.drop_all(store, agent)


def select_rows(
    store: Store,
    table: Literal["hive_questions", "hive_approvals", "hive_reminders"],
    where: Mapping[str, object],
    order: str,
    limit: int | None = None,
) -> list[sqlite3.Row]:
    """The rows of ``table`` whose columns equal ``where``'s values (a None value matches
    any), in ``order`` (an ``ORDER BY`` clause), at most ``limit``."""
    given = {column: value for column, value in where.items() if value is not None}
    sql = f"SELECT * FROM {table}"
    if given:
        sql += " WHERE " + " AND ".join(f"{column} = ?" for column in given)
    params = [*given.values()]
    sql += f" ORDER BY {order}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return store._query(sql, params)


def due_rows(
    store: Store, table: Literal["hive_questions", "hive_approvals"], state: str, now: float
) -> list[sqlite3.Row]:
    """The rows of ``table`` still in ``state`` whose expiry is at or before ``now``, soonest
    first."""
    return store._query(
        f"SELECT * FROM {table} WHERE state = ? AND expires IS NOT NULL"
        " AND expires <= ? ORDER BY expires",
        (state, now),
    )


def next_deadline(store: Store) -> float | None:
    """The earliest time something open falls due: a reminder, or a question's or
    proposal's expiry (None when nothing waits on the clock)."""
    row = store._query(
        "SELECT MIN(t) FROM ("
        " SELECT MIN(due) AS t FROM hive_reminders WHERE state = 'pending'"
        " UNION ALL SELECT MIN(expires) FROM hive_questions WHERE state = 'open'"
        " UNION ALL SELECT MIN(expires) FROM hive_approvals WHERE state = 'pending')"
    )[0]
    return None if row[0] is None else float(row[0])
