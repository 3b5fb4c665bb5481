"""The supervisor's parsed events: the agent's parser run on its raw output, each event
masked, clipped and appended to the run's events file, within caps a hostile agent cannot
push the supervisor (outside the sandbox's limits) past.

Imported by :mod:`hal9999.process.supervisor`, which every task starts: at run time it
imports nothing more than the supervisor itself does; the parser, the event models and
pydantic come only when a parser is asked for.
"""

from __future__ import annotations

import posix
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TextIO

    from hal9999.agents.base import OutputParser
    from hal9999.events.models import Event
    from hal9999.redact import SecretMasker


def load_site() -> None:
    """Make the installed packages importable (a parser's models need pydantic) when started
    without :mod:`site` (``python -S``, as :func:`hal9999.process.launch.supervised` does)."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


class ParsedEvents:
    """Runs the agent's parser on raw output; appends masked events to the events file.

    A parser that cannot be loaded or that breaks is dropped with a note in ``problems``: the
    agent's run and its log must never depend on it."""

    def __init__(self, agent: str | None, path: str | None, masker: SecretMasker | None) -> None:
        self._parser: OutputParser | None = None
        self._file: TextIO | None = None
        self._masker = masker
        self.problems: list[str] = []
        """What went wrong with parsing (written to the log by the caller)."""
        self._written = 0
        self._capped = False
        self._held: dict[str, Event] = {}
        """Past the cap: the last run total, the sum of the steps since, the last session."""
        self._messages_past_cap = 0
        self._skipped = 0
        """Events not recorded (too deep, too long): the first few are named in the log."""
        if agent is None or path is None:
            return
        load_site()
        from hal9999.agents.registry import resolve_agent

        try:
            self._parser = resolve_agent(agent).parser()
        except Exception as exc:  # a broken plugin must not stop the agent
            self.problems.append(f"hal: no parsed events for this run: {exc}\n")
            return
        flags = posix.O_WRONLY | posix.O_CREAT | posix.O_APPEND | posix.O_CLOEXEC
        self._file = open(posix.open(path, flags, 0o600), "w", encoding="utf-8")

    def feed(self, text: str, log_end: int) -> None:
        """Parse a chunk of raw output; ``log_end`` is where the log stands after it."""
        if self._parser is not None:
            self._run(lambda parser: parser.feed(text), log_end)

    def close(self, log_end: int) -> None:
        """End of output: flush the parser's held state (and the usage held past the cap)."""
        if self._parser is not None:
            self._run(lambda parser: parser.close(), log_end)
        if self._held and self._file is not None:
            held, self._held = self._held, {}
            self._write(list(held.values()), log_end)
        if self._skipped > SKIPPED_NOTES:
            more = self._skipped - SKIPPED_NOTES
            self.problems.append(f"hal: {more} more parsed events were not recorded\n")
        if self._file is not None:
            self._file.close()

    def _skip(self, why: str) -> None:
        """Note an event not recorded: the first :data:`SKIPPED_NOTES` in the log, then a
        count at the end (a flood of them must not flood the log)."""
        self._skipped += 1
        if self._skipped <= SKIPPED_NOTES:
            self.problems.append(f"hal: {why}\n")

    def _run(self, step: Callable[[OutputParser], list[Event]], log_end: int) -> None:
        assert self._parser is not None
        try:
            events = step(self._parser)
        except Exception as exc:  # parsers must not raise; one that does is dropped
            self._parser = None
            self.problems.append(f"hal: the output parser failed and was stopped: {exc!r}\n")
            return
        if events and self._file is not None:
            self._write(events, log_end, capped=True)

    def _keep_past_cap(self, event: Event) -> bool:
        """Past :data:`PARSED_CAP`: whether to write ``event`` now. Usage is folded (the last
        total, then the sum of the steps since, as the runner's totals read them) and the
        last session held, both written at the end; a few messages pass. Each was written
        as it came, without end: a line per error or step the agent printed, in the events
        file, the task's events and the store's index."""
        if not self._capped:
            self._capped = True
            self.problems.append(
                f"hal: parsed events past {PARSED_CAP} bytes keep only usage (summed), "
                f"the session and {MESSAGES_PAST_CAP} messages\n"
            )
        if event.type == "agent_session":
            self._held["agent_session"] = event
        elif event.type == "usage":
            self._fold(event)
        elif event.type == "message" and self._messages_past_cap < MESSAGES_PAST_CAP:
            self._messages_past_cap += 1
            return True
        return False

    def _fold(self, usage: Any) -> None:
        if usage.total:
            self._held.pop("steps", None)
            self._held["total"] = usage
            return
        from hal9999.agents.parsing import add_counts

        steps: Any = self._held.get("steps")
        if steps is None:
            self._held["steps"] = usage
            return
        counts = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        summed = {name: add_counts(getattr(steps, name), getattr(usage, name)) for name in counts}
        if usage.cost_usd is not None:
            summed["cost_usd"] = (steps.cost_usd or 0.0) + usage.cost_usd
        self._held["steps"] = steps.model_copy(update=summed)

    def _write(self, events: list[Event], log_end: int, *, capped: bool = False) -> None:
        assert self._file is not None
        import json  # loaded with the parser already

        for event in events:
            if capped and self._written >= PARSED_CAP and not self._keep_past_cap(event):
                continue
            try:  # a raw record nested past the serialiser's depth is the agent's doing
                if self._masker is not None:
                    event = self._masker.mask_model(event)
                data = _clip(event.model_dump(mode="json"))
                line = json.dumps({"log_end": log_end, "event": data}) + "\n"
            except (ValueError, RecursionError):
                self._skip("an event too deep to record was skipped")
                continue
            if len(line) > MAX_PARSED_RECORD:  # the reader would skip it without a word
                self._skip(f"a parsed {event.type} event of {len(line)} bytes (over "
                           f"{MAX_PARSED_RECORD >> 20} MiB) was not recorded; the output "
                           "it came from is in this log")  # fmt: skip
                continue
            self._file.write(line)
            self._written += len(line)
        self._file.flush()


MAX_EVENT_TEXT = 256 * 1024
"""Characters of one text field a parsed event keeps (the whole text is in the log)."""

PARSED_CAP = 64 * 1024 * 1024
"""Bytes of parsed events one run writes before only usage, the session and a few messages
are kept."""

SKIPPED_NOTES = 10
"""Events not recorded (too deep or too long) named one by one in the log; the rest are
counted in one line at the end."""

MESSAGES_PAST_CAP = 1000
"""Messages (errors the agent reported) written past :data:`PARSED_CAP`; usage and the
session are kept too, held and written at the end, so usage and cost stay exact."""


def _clip(value: Any) -> Any:
    """``value`` with every string longer than :data:`MAX_EVENT_TEXT` cut, saying so."""
    if isinstance(value, str) and len(value) > MAX_EVENT_TEXT:
        left = len(value) - MAX_EVENT_TEXT
        return value[:MAX_EVENT_TEXT] + f"… [hal: {left} more characters in the log]"
    if isinstance(value, dict):
        return {key: _clip(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clip(item) for item in value]
    return value


MAX_PARSED_RECORD = 8 << 20
"""The longest record of a parsed-events file: a longer event is not written (the log says
so) and the reader skips one. A record may be longer than a read: a text field keeps 256 Ki
characters, up to 1.5 MB as JSON (6 bytes a non-ASCII character), and many fields more."""
