"""Typed task events: a pydantic discriminated union on ``type``.

Agents' output parsers produce the payload classes without ``seq``/``ts``/``task_id``;
:class:`hal9999.events.log.EventLog` stamps them when it records them.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    seq: int = 0
    """Per-task monotonic sequence number, from 1."""
    gseq: int = 0
    """Global sequence number from the store: unique across every task and process, and
    increasing in the order events are committed (0 when written without a store)."""
    ts: float = 0.0
    """Unix time of recording."""
    task_id: str = ""
    """The task the event belongs to."""


class TaskCreated(_Event):
    """A task was created."""

    type: Literal["task_created"] = "task_created"
    prompt_chars: int
    agent: str
    provider: str
    repo: str
    ref: str | None = None


class IssueFetched(_Event):
    """The issue the task works on was read from its forge (``hal run --issue``)."""

    type: Literal["issue_fetched"] = "issue_fetched"
    issue: str
    """The reference, ``github:OWNER/REPO#N`` or ``gitlab:GROUP/PROJECT#N``."""
    url: str
    """The issue's web address."""
    comments: int = 0
    """Comments (GitLab: notes people wrote) put in the prompt."""


class Phase(_Event):
    """The task moved to another state."""

    type: Literal["phase"] = "phase"
    phase: str
    previous: str | None = None
    detail: str | None = None


class SandboxAcquired(_Event):
    """A sandbox was created or taken from the pool for the task."""

    type: Literal["sandbox_acquired"] = "sandbox_acquired"
    sandbox_id: str
    provider: str
    warm: bool = False


class Output(_Event):
    """A chunk of the agent's raw output (also in the log file)."""

    type: Literal["output"] = "output"
    text: str
    log_end: int | None = None
    """Byte offset in ``agent.log`` just past this chunk, so a re-attached runner resumes there."""


class AgentText(_Event):
    """Prose from the agent."""

    type: Literal["agent_text"] = "agent_text"
    text: str


class ToolCall(_Event):
    """The agent called a tool."""

    type: Literal["tool_call"] = "tool_call"
    name: str
    call_id: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResult(_Event):
    """A tool returned to the agent."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str | None = None
    output: str = ""
    is_error: bool = False


class Usage(_Event):
    """Token usage and cost, as the agent reports it (cumulative when ``total``)."""

    type: Literal["usage"] = "usage"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    total: bool = False
    """True when the figures are the run's totals rather than a step's."""
    source: Literal["agent", "gateway"] = "agent"
    """Who measured it: the agent's own output, or the LLM gateway (one model call, exact)."""
    model: str | None = None
    """The model called (gateway figures)."""
    status: int | None = None
    """The HTTP status the agent got for the call (gateway figures)."""
    latency_ms: float | None = None
    """Request to end of response (gateway figures)."""


class EgressDenied(_Event):
    """The egress proxy refused a connection the agent (or a tool it ran) asked for."""

    type: Literal["egress_denied"] = "egress_denied"
    host: str
    port: int | None = None
    method: str = "CONNECT"


class UpstreamWait(_Event):
    """The LLM gateway holds one of the task's model calls: its upstream refused it (429 rate
    limit, 529 overloaded, another 5xx) or could not be reached, and the gateway tries it
    again after ``wait_s``. The agent is waiting on its upstream, not hung."""

    type: Literal["upstream_wait"] = "upstream_wait"
    status: int
    """The upstream's HTTP status (0: it could not be reached)."""
    wait_s: float
    """Seconds before the next attempt (the upstream's ``retry-after``, or a backoff)."""
    retry: int
    """The attempt about to be made again (1 for the first retry)."""
    retries: int | None = None
    """The most retries the gateway makes (``[gateway] max_retries``) before the agent gets
    the upstream's answer."""
    reason: str
    """What the upstream's answer means (``rate limited``, ``overloaded``, ...)."""
    model: str | None = None
    """The model the call asked for."""


class AgentSession(_Event):
    """The agent's own session id, used to resume it."""

    type: Literal["agent_session"] = "agent_session"
    session_id: str


class RawEvent(_Event):
    """An agent output record hal does not know; kept whole."""

    type: Literal["raw"] = "raw"
    data: dict[str, Any]


class Message(_Event):
    """A note from hal itself (warnings, progress)."""

    type: Literal["message"] = "message"
    level: Literal["info", "warning", "error"] = "info"
    text: str


class TaskEnd(_Event):
    """The task reached a final or resting state."""

    type: Literal["task_end"] = "task_end"
    status: str
    exit_code: int | None = None
    error_code: str | None = None
    error: str | None = None
    files_changed: int = 0
    duration_s: float = 0.0


Event = Annotated[
    TaskCreated
    | IssueFetched
    | Phase
    | SandboxAcquired
    | Output
    | AgentText
    | ToolCall
    | ToolResult
    | Usage
    | EgressDenied
    | UpstreamWait
    | AgentSession
    | RawEvent
    | Message
    | TaskEnd,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event, config=ConfigDict(defer_build=True))
"""Validates any event. Built on first use, as every model here is (``defer_build``): a
plain ``hal run`` makes five kinds of event and reads back none through the union, and
building all fifteen models and the union would be much of its start."""

_BY_TYPE: dict[str, type[_Event]] = {
    model.model_fields["type"].default: model for model in get_args(get_args(Event)[0])
}


def parse_event(line: str | bytes) -> Event:
    """Parse one JSONL line into a typed event.

    A line is validated by the one model its ``type`` names, as the union does, so a process
    builds only the models of the events it reads; a line that does not validate that way
    goes through :data:`EVENT_ADAPTER`, which raises the error it always did."""
    try:
        data = from_json(line)
    except ValueError:
        data = None
    kind = data.get("type") if isinstance(data, dict) else None
    model = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if model is not None:
        try:
            return model.model_validate_json(line)  # type: ignore[return-value]
        except ValidationError:
            pass
    return EVENT_ADAPTER.validate_json(line)
