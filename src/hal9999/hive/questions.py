"""Questions: to the operator or to another agent, answered later into the asker's mailbox.

:func:`ask` returns the question's id at once (a tool call never waits minutes for a
person); the answer arrives as a message of kind ``answer`` (``ref`` = the question's id),
which wakes the asker's next turn. A question to the operator waits in the operator's queue
(``hal questions list``); one to an agent is also a message in that agent's inbox. Only the
target answers, or the operator overriding; an agent never asks itself. A question with a
TTL that runs out is answered by ``hal`` with a sentinel the asker cannot mistake for a
real answer (:data:`EXPIRED_PREFIX`).

Store calls are synchronous: callers on an event loop run these in a worker thread.
"""

from __future__ import annotations

import sqlite3
import time

from hal9999.errors import ThreadForbidden, ThreadStateError, UsageError
from hal9999.events.hive import HiveEvent, QuestionAnswered, QuestionAsked, QuestionExpired
from hal9999.hive import broker
from hal9999.hive.broker import OPERATOR, SYSTEM
from hal9999.hive.store import hive_write, insert_hive_event
from hal9999.hive.threads import (
    Question,
    agent_or_none,
    check_participant,
    check_text,
    due_rows,
    find_row,
    new_id,
    notice,
    notify_deadline,
    question_of,
    select_rows,
)
from hal9999.store import Store

EXPIRED_PREFIX = "[no answer]"
"""How the sentinel answer of an expired question starts."""
MAX_TTL_S = 30 * 86400.0
MAX_OPEN = 50
"""Unanswered questions one agent may have asked (a looping agent must not flood anyone)."""


def _check_room(store: Store, asker: str, conn: sqlite3.Connection | None = None) -> None:
    """UsageError when ``asker`` has :data:`MAX_OPEN` questions unanswered (counted in the
    insert's transaction when ``conn`` is given)."""
    sql = "SELECT COUNT(*) FROM hive_questions WHERE asker = ? AND state = 'open'"
    (waiting,) = conn.execute(sql, (asker,)).fetchone() if conn else store._query(sql, (asker,))[0]
    if asker != OPERATOR and waiting >= MAX_OPEN:
        raise UsageError(
            f"{asker} already has {waiting} unanswered questions",
            hint="wait for answers (see open_threads) before asking more",
        )


def _check_rate(conn: sqlite3.Connection, asker: str, now: float) -> None:
    """HiveLimited when agent ``asker`` asked the broker's ``rate_per_minute`` questions in
    the last 60 s. A question to the operator is no message (no broker guard), and one whose
    ttl runs out at once frees its place among the open ones as hal answers it into the
    asker's mailbox: without this, an agent grew its mailbox and the store without bound."""
    if asker != OPERATOR:
        broker.check_minute_rate(
            conn, "hive_questions", "asker", asker, now, did="asked {n} questions",
            hint="wait a minute; put what you need to know into fewer questions",
        )  # fmt: skip


def ask(
    store: Store, *, asker: str, question: str, to: str = OPERATOR, ttl_s: float | None = None
) -> Question:
    """Queue ``question`` for ``to`` (the operator or an agent); returns it with its id."""
    check_participant(store, asker, "the asker")
    check_participant(store, to, "the question's target")
    if asker == to:
        raise ThreadForbidden(
            f"{asker} cannot ask itself", hint="ask the operator or another agent"
        )
    check_text(question, "question")
    if ttl_s is not None and not 0 < ttl_s <= MAX_TTL_S:
        raise UsageError(f"a question's ttl must be above 0 and at most 30 days, not {ttl_s}")
    _check_room(store, asker)
    now = time.time()
    asked = Question(
        id=new_id("q"), asker=asker, target=to, question=question, state="open", created=now,
        expires=now + ttl_s if ttl_s is not None else None,
    )  # fmt: skip
    message = None
    if to != OPERATOR:
        body = (f"Question {asked.id} from {asker}:\n{question}\n"
                f"(reply with answer(id={asked.id!r}, text=...))")  # fmt: skip
        # Refused here by a broker guard (rate, loop), the question is never asked.
        message = broker.prepare(store, sender=asker, recipient=to, body=body, kind="question",
                                 ref=asked.id)  # fmt: skip
    event = QuestionAsked(agent=agent_or_none(asker) or to, question_id=asked.id, asker=asker,
                          target=to)  # fmt: skip
    # The question and the message that puts it to its target in one transaction: a crash
    # never leaves one waiting for an answer from an agent that was never asked.
    with hive_write(store) as (conn, recorded):
        _check_room(store, asker, conn)  # again: calls made at once all passed the first
        _check_rate(conn, asker, now)
        conn.execute(
            "INSERT INTO hive_questions (id, asker, target, question, state, created, expires)"
            " VALUES (?, ?, ?, ?, 'open', ?, ?)",
            (asked.id, asker, to, question, now, asked.expires),
        )
        if message is not None:
            broker.commit(conn, recorded, message)
        recorded.append(insert_hive_event(conn, event))
    if message is not None:
        broker.wake(to)
    if asked.expires is not None:
        notify_deadline()
    return asked


def get(store: Store, question_id: str, *, target: str | None = None) -> Question:
    """The question with this id (or unique id prefix); with ``target``, among those asked
    of that agent only."""
    return question_of(find_row(store, "question", question_id, target=target))


def list_questions(
    store: Store, *, target: str | None = None, open_only: bool = True, limit: int = 200
) -> list[Question]:
    """The latest ``limit`` questions, oldest first: to ``target`` only when given;
    unanswered only by default."""
    where = {"target": target, "state": "open" if open_only else None}
    rows = select_rows(store, "hive_questions", where, "created DESC", limit)
    return [question_of(row) for row in reversed(rows)]


def _settle(store: Store, question: Question, state: str, answer: str,
            answerer: str, event: HiveEvent, message: broker.Message | None) -> bool:  # fmt: skip
    """Compare-and-set the open question to ``state``; False when someone else moved it
    first. The message to the asker (its answer, or the sentinel) and ``event`` are
    committed in the same transaction: a crash never leaves a question closed whose asker
    is never told."""
    with hive_write(store) as (conn, recorded):
        changed = conn.execute(
            "UPDATE hive_questions SET state = ?, answer = ?, answerer = ?, answered = ?"
            " WHERE id = ? AND state = 'open'",
            (state, answer, answerer, time.time(), question.id),
        ).rowcount
        if changed == 1:
            if message is not None:
                broker.commit(conn, recorded, message)
            recorded.append(insert_hive_event(conn, event))
    if changed == 1 and message is not None:
        broker.wake(message.recipient)
    return changed == 1


def _closed(question: Question) -> ThreadStateError:
    how = "expired" if question.state == "expired" else f"answered by {question.answerer}"
    return ThreadStateError(f"question {question.id} is already {how}", hint="nothing to do")


def answer(store: Store, question_id: str, text: str, *, answerer: str) -> Question:
    """Answer an open question; the answer goes to the asker's mailbox. Only its target, or
    the operator overriding, may answer."""
    # An agent finds only the questions asked of it: another's id, who it is for, and
    # whether a prefix matches any are not its to learn.
    question = get(store, question_id, target=None if answerer == OPERATOR else answerer)
    if answerer not in (question.target, OPERATOR):
        raise ThreadForbidden(
            f"question {question.id} is for {question.target}; only {question.target} (or the "
            "operator) may answer it",
            hint="answer the questions asked of you (see open_threads)",
        )
    check_text(text, "answer")
    if question.state != "open":
        raise _closed(question)
    if question.expires is not None and question.expires <= time.time():
        _expire(store, question)
        raise ThreadStateError(f"question {question.id} has expired", hint="nothing was sent")
    by = answerer if answerer == question.target else f"{answerer} (for {question.target})"
    body = f"Answer from {by} to your question {question.id} ({_short(question.question)}):\n{text}"
    # Refused here (a broker guard, the asker removed), the question stays open.
    message = broker.prepare(store, sender=answerer, recipient=question.asker, body=body,
                             kind="answer", ref=question.id)  # fmt: skip
    event = QuestionAnswered(
        agent=agent_or_none(question.asker) or answerer, question_id=question.id,
        asker=question.asker, target=question.target, answerer=answerer)  # fmt: skip
    if not _settle(store, question, "answered", text, answerer, event, message):
        raise _closed(get(store, question.id))
    return get(store, question.id)


def _short(text: str) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= 80 else line[:77] + "...")


def _expire(store: Store, question: Question, why: str | None = None, *, tell: bool = True) -> bool:
    waited = ""
    if question.expires is not None:
        waited = f" after {round(question.expires - question.created)} s"
    why = why or f"expired{waited} without an answer"
    sentinel = (f"{EXPIRED_PREFIX} question {question.id} to {question.target} {why}; "
                "go on without it, or ask again.")  # fmt: skip
    event = QuestionExpired(agent=agent_or_none(question.asker), question_id=question.id,
                            asker=question.asker, target=question.target)  # fmt: skip
    body = f"{sentinel}\nThe question was: {_short(question.question)}"
    told = notice(store, recipient=question.asker, body=body, kind="answer",
                  ref=question.id) if tell else None  # fmt: skip
    return _settle(store, question, "expired", sentinel, SYSTEM, event, told)


def close_all(store: Store, agent: str) -> int:
    """Close the open questions of an agent being removed: those it asked (nobody told) and
    those waiting for its answer (their askers get the sentinel)."""
    rows = store._query(
        "SELECT * FROM hive_questions WHERE state = 'open' AND (asker = ? OR target = ?)",
        (agent, agent),
    )
    closed = 0
    for question in map(question_of, rows):
        gone = question.asker == agent
        closed += _expire(store, question, f"cannot be answered: {agent} was removed",
                          tell=not gone)  # fmt: skip
    return closed


def expire_due(store: Store, now: float | None = None) -> list[Question]:
    """Answer every open question whose time is up with the sentinel; returns them."""
    now = time.time() if now is None else now
    rows = due_rows(store, "hive_questions", "open", now)
    return [question for question in map(question_of, rows) if _expire(store, question)]
