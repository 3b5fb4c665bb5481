"""How the CLI shows tasks and events to a person."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from hal9999.cli.output import breaks_shown, sanitize
from hal9999.cli.task_table import short
from hal9999.cli.task_table import summary as summary  # re-exported: light, in task_table

if TYPE_CHECKING:
    from hal9999.events.models import Event
    from hal9999.store import TaskRecord


def event_line(event: Event) -> str | None:
    """One line for an event; None for events not worth a line (raw output chunks)."""
    # Here, not at import: ``--json``'s task (:func:`task_json`) needs no event model, and
    # the models are most of what this module cost a ``hal task show``.
    from hal9999.events.models import (
        AgentSession,
        AgentText,
        Message,
        Output,
        Phase,
        RawEvent,
        SandboxAcquired,
        TaskCreated,
        TaskEnd,
        ToolCall,
        ToolResult,
        Usage,
    )

    stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
    body: str
    match event:
        case TaskCreated():
            body = f"task created: agent {event.agent}, provider {event.provider}, {event.repo}"
        case Phase():
            body = f"phase {event.phase}" + (f" ({event.detail})" if event.detail else "")
        case SandboxAcquired():
            body = f"sandbox {event.sandbox_id} ({event.provider})"
        case Output():
            return None
        case AgentText():
            body = f"agent: {short(event.text)}"
        case ToolCall():
            body = f"tool {event.name} {short(json.dumps(event.input), 80)}"
        case ToolResult():
            mark = "error" if event.is_error else "ok"
            body = f"result {mark}: {short(event.output, 80)}"
        case Usage():
            cost = f", ${event.cost_usd:.4f}" if event.cost_usd is not None else ""
            kind = "total" if event.total else "step"
            body = f"usage ({kind}): {event.input_tokens} in, {event.output_tokens} out{cost}"
        case AgentSession():
            body = f"agent session {event.session_id}"
        case RawEvent():
            body = f"raw {short(json.dumps(event.data), 80)}"
        case Message():
            body = f"{event.level}: {event.text}"
        case TaskEnd():
            tail = f" — {event.error}" if event.error else ""
            body = f"end: {event.status} (exit {event.exit_code}){tail}"
    # Agent text, tool names and output, messages and errors come from the agent: no escape
    # sequence passes, and no line break, which began a line of the agent's own here.
    return breaks_shown(sanitize(f"{event.seq:>5} {stamp} {body}".rstrip()))


def task_json(task: TaskRecord) -> dict[str, Any]:
    """The JSON form of a task for ``--json``: its record's fields and ``branch_made``."""
    from hal9999.cli.task_doc import with_branch_made

    return with_branch_made(task.model_dump(mode="json"))
