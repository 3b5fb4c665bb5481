"""The hive events of approvals, questions and reminders (typed, numbered by the store).

They carry ids, names and states only, never a question's text, an answer or a diff: an
event goes to every dashboard and log, the text stays in the store behind its id.
"""

from __future__ import annotations

import logging
from typing import Literal

from hal9999.hive.store import HiveEventBase, record_hive_event
from hal9999.store import Store

logger = logging.getLogger(__name__)


class ApprovalAdded(HiveEventBase):
    """A proposal joined the approval queue."""

    type: Literal["approval_added"] = "approval_added"
    approval_id: str
    kind: str
    proposer: str


class ApprovalResolved(HiveEventBase):
    """A proposal was approved, denied or expired."""

    type: Literal["approval_resolved"] = "approval_resolved"
    approval_id: str
    kind: str
    proposer: str
    state: str
    resolved_by: str


class QuestionAsked(HiveEventBase):
    """An agent (or the operator) asked the operator or another agent."""

    type: Literal["question_asked"] = "question_asked"
    question_id: str
    asker: str
    target: str


class QuestionAnswered(HiveEventBase):
    """A question got its answer (from its target, or the operator overriding)."""

    type: Literal["question_answered"] = "question_answered"
    question_id: str
    asker: str
    target: str
    answerer: str


class QuestionExpired(HiveEventBase):
    """A question's time ran out; the asker got the sentinel answer."""

    type: Literal["question_expired"] = "question_expired"
    question_id: str
    asker: str
    target: str


class ReminderSet(HiveEventBase):
    """An agent set a reminder."""

    type: Literal["reminder_set"] = "reminder_set"
    reminder_id: str
    agent: str
    due: float


class ReminderDue(HiveEventBase):
    """A reminder came due and was delivered to its agent's mailbox."""

    type: Literal["reminder_due"] = "reminder_due"
    reminder_id: str
    agent: str


ThreadEvent = (
    ApprovalAdded
    | ApprovalResolved
    | QuestionAsked
    | QuestionAnswered
    | QuestionExpired
    | ReminderSet
    | ReminderDue
)


def record(store: Store, event: ThreadEvent) -> None:
    """Write ``event`` to the store and the bus. The action it reports is already committed,
    so a failure here is logged and never undoes it."""
    try:
        record_hive_event(store, event)
    except Exception:
        logger.exception("recording the hive event %s failed", event.type)
