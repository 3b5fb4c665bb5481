"""Typed hive events: what the hive did (messages, agent states, crashes, turns, and the
approval, question and reminder actions of :mod:`hal9999.hive`), as a pydantic union
discriminated on ``type``.

Each event gets a ``gseq`` from the store's one ``event_counter`` (the same counter as
task events), so a dashboard resumes every stream, task and hive alike, from one number.
They live here, in the records layer, so the event bus can carry them without importing
the hive. Every engineer adds the types of its own actions to :data:`HiveEvent`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _HiveEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gseq: int = 0
    """Global sequence number (the store's event counter); 0 until recorded."""
    ts: float = 0.0
    """Unix time of recording."""
    agent: str | None = None
    """The agent the event is about (None for operator-only actions)."""


class MessageSent(_HiveEvent):
    """The broker committed a message."""

    type: Literal["message_sent"] = "message_sent"
    id: str
    sender: str
    recipient: str
    kind: str
    ref: str | None = None
    chars: int = 0
    """The body's length; the body itself stays in the broker (events are broadcast)."""


class MessageDelivered(_HiveEvent):
    """Messages were handed to their recipient's mailbox (its next turn's prompt)."""

    type: Literal["message_delivered"] = "message_delivered"
    ids: list[str]


class MessageRead(_HiveEvent):
    """Messages were read: the turn that got them ended, or the operator read them."""

    type: Literal["message_read"] = "message_read"
    ids: list[str]


class MessageDropped(_HiveEvent):
    """The operator took unread messages out of an agent's mailbox: no turn gets them."""

    type: Literal["message_dropped"] = "message_dropped"
    ids: list[str]


class AgentState(_HiveEvent):
    """An agent changed state (spawned, woke, slept, stopped, crashed, removed)."""

    type: Literal["agent_state"] = "agent_state"
    state: str
    previous: str | None = None
    detail: str | None = None


class AgentCrashed(_HiveEvent):
    """An agent's sandbox or process went away without an operator action."""

    type: Literal["agent_crashed"] = "agent_crashed"
    detail: str
    crashes: int
    """Crashes in the current crash window (the crash loop guard counts these)."""
    restart_in_s: float | None = None
    """When crash watch restarts it; None when it gave up (crash loop) or policy says no."""


class TurnFinished(_HiveEvent):
    """One turn of an agent ended (its stats row is ``turn_id``)."""

    type: Literal["turn_finished"] = "turn_finished"
    turn_id: int
    result: str
    duration_ms: float
    wake_reason: str


class HiveGuard(_HiveEvent):
    """A hive guard stopped something: budget, rate limit, or a ping-pong loop."""

    type: Literal["hive_guard"] = "hive_guard"
    guard: Literal["budget", "rate_limit", "loop"]
    detail: str


class ApprovalAdded(_HiveEvent):
    """A proposal joined the approval queue (``agent``: the proposer)."""

    type: Literal["approval_added"] = "approval_added"
    approval_id: str
    kind: str


class ApprovalResolved(_HiveEvent):
    """A proposal was approved, denied or expired (``agent``: the proposer)."""

    type: Literal["approval_resolved"] = "approval_resolved"
    approval_id: str
    kind: str
    state: str
    resolved_by: str


class QuestionAsked(_HiveEvent):
    """A question to the operator or another agent (``agent``: the asker, when an agent).
    Ids and names only: the text stays in the store."""

    type: Literal["question_asked"] = "question_asked"
    question_id: str
    asker: str
    target: str


class QuestionAnswered(_HiveEvent):
    """A question got its answer, from its target or the operator overriding."""

    type: Literal["question_answered"] = "question_answered"
    question_id: str
    asker: str
    target: str
    answerer: str


class QuestionExpired(_HiveEvent):
    """A question's time ran out; the asker got the sentinel answer."""

    type: Literal["question_expired"] = "question_expired"
    question_id: str
    asker: str
    target: str


class ReminderSet(_HiveEvent):
    """An agent set a reminder for itself."""

    type: Literal["reminder_set"] = "reminder_set"
    reminder_id: str
    due: float


class ReminderDue(_HiveEvent):
    """A reminder came due and was delivered to its agent's mailbox."""

    type: Literal["reminder_due"] = "reminder_due"
    reminder_id: str


HiveEvent = Annotated[
    MessageSent | MessageDelivered | MessageRead | MessageDropped | AgentState | AgentCrashed
    | TurnFinished | HiveGuard
    | ApprovalAdded | ApprovalResolved | QuestionAsked | QuestionAnswered | QuestionExpired
    | ReminderSet | ReminderDue,
    Field(discriminator="type"),
]  # fmt: skip

HIVE_EVENT_ADAPTER: TypeAdapter[HiveEvent] = TypeAdapter(HiveEvent)


def parse_hive_event(data: str | bytes) -> HiveEvent:
    """Parse one stored hive event (JSON) into its typed form."""
    return HIVE_EVENT_ADAPTER.validate_json(data)
