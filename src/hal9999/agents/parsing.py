"""Line-oriented output parsers that agent presets build on.

Every parser buffers partial lines across :meth:`feed` calls, so the events it returns do not
depend on how the output was chunked, and accepts ``\\n`` and ``\\r\\n`` line ends. Parsers
never raise on odd input: a line that is not JSON is noise and yields nothing (the raw text
is kept as ``output`` events elsewhere), and a JSON record of a type the parser does not know
becomes a :class:`~hal9999.events.models.RawEvent`, so nothing the agent reported is lost.

Conventions shared by the presets' parsers:

* ``Usage.input_tokens`` counts input tokens *not* served from a cache, where the agent
  reports that split; cache reads and writes go to their own fields.
* Reasoning/thinking text is not reported as :class:`AgentText` (it is in the raw output).
* Errors the agent reports about itself become :class:`Message` events.
"""

from __future__ import annotations

import functools
import json
import math
import re
from abc import ABC, abstractmethod
from typing import Any

from hal9999.events.models import AgentSession, AgentText, Event, Message, RawEvent

_RECOVERABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)
"""What a malformed-but-JSON record can raise while a parser reads it."""


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate: the only way a lone one gets into decoded text."""
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,255}")
"""What an agent session id may be (UUIDs, ``ses_...``): the id is the agent's own output,
and a resumed run passes it back as an argument of the agent's command, where ``--x`` was an
option of the CLI (``codex exec resume`` takes it bare) and ``x;`` tmux syntax."""


MAX_LINE_CHARS = 16 * 1024 * 1024
"""A line longer than this is skipped whole (its text stays in the log): an agent that
prints a 300 MB line must not make hal hold it in memory to parse it."""


MAX_JSON_VALUES = 100_000
"""A JSON line holding more values than this (outside its strings) is skipped whole, like a
line too long: each value costs ~60-100 bytes of objects, for as little as 3 characters of
output (``[],``), and the record is copied a few times on its way to the events file. A
15 MB line of ``[{},{},...]`` took 1.2 GB and 15 s of the supervisor, a process outside
the sandbox's limits; no record an agent really prints comes near (text is one string)."""

_JSON_STRING = r'"[^"]*"'
"""A JSON string once its escaped backslashes and quotes are gone (no backtracking: a
quote that never closes is one scan to the end, and no quote follows it). Compiled on first
use (a line past the bound only), through ``re``'s cache."""


def too_many_values(text: str) -> bool:
    """Whether the JSON in ``text`` may hold more than :data:`MAX_JSON_VALUES` values: every
    value but a container's first follows a comma, so commas and opening brackets bound
    them; only a line over the bound by that count has its strings taken out to count
    exactly (C-level passes, no per-value objects)."""
    if text.count(",") + text.count("[") + text.count("{") <= MAX_JSON_VALUES:
        return False
    # Left to right, as JSON reads them: "\\" is one backslash, then "\"" a quote.
    bare = re.sub(_JSON_STRING, "", text.replace("\\\\", "").replace('\\"', ""))
    return bare.count(",") + bare.count("[") + bare.count("{") > MAX_JSON_VALUES


class LineParser(ABC):
    """Splits a stream into lines and hands each complete line to :meth:`parse_line`."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._pending_chars = 0
        self._oversized = False
        """Inside a line already past ``MAX_LINE_CHARS``: skip to its end."""

    def feed(self, data: str) -> list[Event]:
        """Consume a chunk of output; return the events of the lines it completes."""
        if "\n" not in data:
            self._hold(data)
            return []
        head, _, tail = data.rpartition("\n")
        lines = "".join([*self._pending, head]).split("\n")
        if self._oversized:
            lines = lines[1:]  # the end of the line that was too long
            self._oversized = False
        self._pending, self._pending_chars = [], 0
        self._hold(tail)
        events: list[Event] = []
        for line in lines:
            if len(line) <= MAX_LINE_CHARS:
                events.extend(self._line(line))
        return events

    def _hold(self, data: str) -> None:
        if not data or self._oversized:
            return
        self._pending.append(data)
        self._pending_chars += len(data)
        if self._pending_chars > MAX_LINE_CHARS:
            self._pending, self._pending_chars, self._oversized = [], 0, True

    def close(self) -> list[Event]:
        """End of output: parse any unterminated last line, then flush held state."""
        events: list[Event] = []
        if self._pending and not self._oversized:
            line = "".join(self._pending)
            events.extend(self._line(line))
        self._pending, self._pending_chars, self._oversized = [], 0, False
        events.extend(self.finish())
        return events

    def _line(self, line: str) -> list[Event]:
        return self.parse_line(line.removesuffix("\r"))

    @abstractmethod
    def parse_line(self, line: str) -> list[Event]:
        """The events one complete line (without its line end) yields."""

    def finish(self) -> list[Event]:
        """Events held back until the end of output (none by default)."""
        return []


class PlainTextParser(LineParser):
    """Plain-text output: lines yield nothing unless :meth:`parse_text_line` recognises them.

    Prose is deliberately not turned into :class:`AgentText` line by line; the raw text is
    already recorded as ``output`` events and would only be duplicated.
    """

    def parse_line(self, line: str) -> list[Event]:
        """Recognise one line; never raises."""
        try:
            return self.parse_text_line(line)
        except _RECOVERABLE:
            return []

    def parse_text_line(self, line: str) -> list[Event]:
        """Events for a recognised line; subclasses override (the default knows none)."""
        return []


class JsonLinesParser(LineParser):
    """JSON Lines output: one object per line, surrounded by arbitrary noise.

    Subclasses implement :meth:`parse_record`. A record that makes it fail (a field of an
    unexpected type, say) is kept whole as a :class:`RawEvent` rather than raising.
    """

    def __init__(self) -> None:
        super().__init__()
        self._session_id: str | None = None

    def parse_line(self, line: str) -> list[Event]:
        """Decode one line; noise yields nothing, malformed known records a RawEvent."""
        text = line.strip()
        if not text.startswith("{") or too_many_values(text):
            return []
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):  # nested past the parser: noise too
            return []
        if not isinstance(record, dict):
            return []
        if _SURROGATE_ESCAPE.search(text):
            mend_surrogates(record)
        try:
            return self.parse_record(record)
        except _RECOVERABLE:
            return [RawEvent(data=record)]

    @abstractmethod
    def parse_record(self, record: dict[str, Any]) -> list[Event]:
        """The events one decoded JSON object yields."""

    def session(self, session_id: object) -> list[Event]:
        """An :class:`AgentSession` event the first time a new session id is seen (one of
        the form :data:`SESSION_ID` only: another is never resumed)."""
        if not isinstance(session_id, str) or session_id == self._session_id:
            return []
        if not SESSION_ID.fullmatch(session_id):
            return []
        self._session_id = session_id
        return [AgentSession(session_id=session_id)]


@functools.cache
def _surrogate() -> re.Pattern[str]:
    """A lone UTF-16 surrogate, compiled when a record first has one to mend: the class of
    2,048 code points is dear to compile at import, on the path of every run whose
    agent never prints one."""
    return re.compile("[\ud800-\udfff]")


def mend_surrogates(record: dict[str, Any] | list[Any]) -> None:
    """Replace, in place, each lone surrogate in the strings (keys too) of decoded JSON with
    U+FFFD. ``json.loads`` turns an escape such as ``\\ud800`` into one; no file, database
    or JSON encoder takes it, so an agent printing one made the run fail when it wrote
    the event (walked without recursion: a record may nest as deep as the parser allows)."""
    surrogate = _surrogate()
    stack: list[dict[str, Any] | list[Any]] = [record]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and any(surrogate.search(key) for key in node):
            items = [(surrogate.sub("\ufffd", key), value) for key, value in node.items()]
            node.clear()
            node.update(items)
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        mended = []
        for key, value in pairs:
            if isinstance(value, str):
                if surrogate.search(value):
                    mended.append((key, surrogate.sub("\ufffd", value)))
            elif isinstance(value, dict | list):
                stack.append(value)
        for key, value in mended:
            node[key] = value  # type: ignore[index]


MAX_HELD_TEXT = 1 << 20
"""Characters of streamed text a parser holds while it joins the pieces of one message; the
supervisor keeps a quarter of that per event anyway, and the whole text is in the log."""


class HeldText:
    """Streamed pieces of one text, joined when the text ends: the first
    :data:`MAX_HELD_TEXT` characters and a count of the rest. Held whole, one message that
    never ended (deltas without end, one goose message id) held everything the agent
    printed, in the supervisor, outside the sandbox's limits."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._held = 0
        self._dropped = 0

    def append(self, text: str) -> None:
        """Add the next piece."""
        room = MAX_HELD_TEXT - self._held
        if len(text) > room:
            self._dropped += len(text) - room
            text = text[:room]
        if text:
            self._parts.append(text)
            self._held += len(text)

    def take(self) -> str:
        """The text so far (saying how much was left out), and start again."""
        text = "".join(self._parts)
        if self._dropped:
            text += f"… [hal: {self._dropped} more characters in the log]"
        self._parts, self._held, self._dropped = [], 0, 0
        return text


def text_event(text: object) -> list[Event]:
    """An :class:`AgentText` for non-blank text, else nothing."""
    if isinstance(text, str) and text.strip():
        return [AgentText(text=text)]
    return []


def error_event(text: object, *, level: str = "error") -> list[Event]:
    """A :class:`Message` carrying an error the agent reported."""
    message = text if isinstance(text, str) and text else "the agent reported an error"
    return [Message(level="warning" if level == "warning" else "error", text=message)]


def as_dict(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


MAX_COUNT = 10**12
"""The largest token count a parser reports (no run reaches it; a larger figure is made up,
and the store's integers end at 2**63)."""
MAX_COST_USD = 1e9
"""The largest cost in USD a parser reports."""


def as_int(value: object) -> int:
    """A token count from JSON, at most :data:`MAX_COUNT`; anything that is not a finite
    number, or is below 0, counts as 0 (the agent's output is its own to write)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return min(max(int(value), 0), MAX_COUNT)


def add_counts(*counts: int) -> int:
    """The sum of token counts, at most :data:`MAX_COUNT`: each figure an agent reports is
    bounded, but a run may report millions of steps (9.3 million of 10**12 pass the
    store's 2**63, and the run's end failed writing its totals)."""
    return min(sum(counts), MAX_COUNT)


def as_cost(value: object) -> float | None:
    """A cost in USD from JSON, at most :data:`MAX_COST_USD`; ``None`` when absent or not a
    finite number of at least 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        return None
    return float(min(value, MAX_COST_USD))


def tool_input(value: object) -> dict[str, Any]:
    """A tool's input as an object (non-object inputs are wrapped as ``{"value": ...}``)."""
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    return {"value": value}


def content_text(content: object) -> str:
    """Flatten tool output given as a string or as a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return "" if content is None else json.dumps(content)
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            text = block.get("text")
            parts.append(text if isinstance(text, str) else f"[{block.get('type', 'content')}]")
    return "\n".join(parts)
