"""hal's notes during a foreground ``hal run``, one line each on stderr: its warnings and
errors (a submodule that could not be fetched, output that can no longer be shown) and a
model call waiting on its upstream (a 429 the gateway retries). They are events of the
task (``message``, ``upstream_wait``); shown nowhere else, a run looked silent, or hung,
while hal knew why. The same lines in process and through ``hal serve``.

Light at import: the thin ``hal run`` client renders the events' JSON with it.
"""

from __future__ import annotations

from hal9999.events.own import HAL_NOTES

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

    from hal9999.events.models import Event


def _field(event: Event | Mapping[str, Any], name: str) -> Any:
    if isinstance(event, dict):
        return event.get(name)
    return getattr(event, name, None)


def upstream_wait_line(event: Event | Mapping[str, Any]) -> str:
    """What an ``upstream_wait`` event says: who refused, how long the gateway waits, which
    retry it is, and that the agent is waiting, not hung."""
    status = int(_field(event, "status") or 0)
    reason = _field(event, "reason") or "error"
    what = f"answered {status} ({reason})" if status else "could not be reached"
    retries = _field(event, "retries")
    retry = f"retry {_field(event, 'retry')}" + (f" of {retries}" if retries is not None else "")
    wait = float(_field(event, "wait_s") or 0.0)
    return (
        f"the model's upstream {what}: the LLM gateway tries the call again in {wait:.0f} s"
        f" ({retry}); the agent waits on it"
    )


TAIL_BYTES = 256 << 10
"""How much of the end of a task's event log :func:`upstream_waiting` reads: a call's wait
and its end are among the last events (the agent says little while it waits)."""


def upstream_waiting(events_path: str | Path) -> str | None:
    """What a running task waits on when one of its model calls is held for its upstream
    (the last event of its calls is an ``upstream_wait``, no call ended since), for
    ``hal task show`` and ``hal status``; None otherwise."""
    import json
    import time

    try:
        with open(events_path, "rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - TAIL_BYTES))
            tail = file.read()
    except OSError:
        return None
    for line in reversed(tail.split(b"\n")):
        if b'"upstream_wait"' not in line and b'"gateway"' not in line:
            continue  # most lines: no need to parse them
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the first line, cut by the tail; or one half written
        if not isinstance(event, dict):
            continue
        if event.get("type") == "usage" and event.get("source") == "gateway":
            return None  # a call ended since
        if event.get("type") == "upstream_wait":
            stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("ts") or 0)))
            return f"since {stamp}, {upstream_wait_line(event)}"
    return None


def upstream_note(doc: Mapping[str, Any]) -> str | None:
    """``hal task show``'s line for a running task (its JSON ``doc``) waiting on its
    model's upstream, or None."""
    import os

    if doc.get("status") != "running":
        return None
    waiting = upstream_waiting(os.path.join(str(doc["session_dir"]), "events.jsonl"))
    return None if waiting is None else f"waiting   {waiting}"


def note_line(event: Event | Mapping[str, Any]) -> str | None:
    """The line a foreground run prints on stderr for ``event``, or None (not a note, or
    an info message)."""
    kind = _field(event, "type")
    if kind == "message":
        level = _field(event, "level")
        if level not in ("warning", "error"):
            return None
        text = str(_field(event, "text") or "")
    elif kind == "upstream_wait":
        level, text = "waiting", upstream_wait_line(event)
    else:
        return None
    from hal9999.cli.output import breaks_shown, sanitize

    # The text may carry the agent's words (an error it reported): one line, no escapes.
    return breaks_shown(sanitize(f"hal: {level}: {text}".rstrip()))


def with_notes(
    on_event: Callable[[Any], None] | None, *, said: str | None = None
) -> Callable[[Any], None]:
    """``on_event`` that prints hal's notes (:data:`HAL_NOTES`) to stderr as one line each
    and hands every other event on (to nothing when ``on_event`` is None). ``said``: a
    warning the command printed before the run (the offline notice), which the run records
    too and is not printed twice."""
    from hal9999.cli.echo import echo

    def shown(event: Any) -> None:
        if _field(event, "type") in HAL_NOTES:
            line = note_line(event)
            if line is not None and not (said is not None and _field(event, "text") == said):
                echo(line, err=True)
            return
        if on_event is not None:
            on_event(event)

    return shown
