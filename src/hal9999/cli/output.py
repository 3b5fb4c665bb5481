"""What the CLI prints of an agent's run: sanitised for a terminal, and readable.

Agent output is hostile input to the user's terminal: escape sequences can set the window
title, write the clipboard (OSC 52), move the cursor and clear the screen to paint a fake
"status succeeded". :func:`sanitize` (and :class:`TerminalSanitizer` for a stream whose
chunks may split a sequence) keeps SGR colours and the ``\\n``/``\\t`` controls and drops
every other escape sequence (CSI, OSC, DCS, SOS/PM/APC), C1 control and C0 control.
``hal task attach`` is tmux itself: tmux is the terminal the agent writes to there.

:class:`EventRenderer` turns parsed events into what a person reads during ``hal run`` in a
terminal: the agent's text, one line per tool call (tool and file or command), results
summarised, errors in red. Usage and cost are in the summary printed at the end.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hal9999.visible import SPELLED_OUT

if TYPE_CHECKING:
    from hal9999.events.models import Event
    from hal9999.store import TaskRecord
    from hal9999.tasks.service import TaskService

_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (SGR among them, kept by the caller)
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: title, clipboard (52), hyperlinks
    r"|\x1b[PX^_][^\x1b]*\x1b\\"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*(?![\[\]PX^_])[0-~]"  # any other escape (reset, charset, keypad...)
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls but tab and newline, DEL, and C1 controls (8-bit CSI, OSC, DCS...)."""
_UNSAFE = re.compile(f"{_ESCAPE.pattern}|{_CONTROLS.pattern}")

_HOLD_MAX = 4096
"""An unfinished escape sequence at the end of a chunk is held back up to this length."""

RED = "\x1b[31m"
YELLOW = "\x1b[33m"
DIM = "\x1b[2m"
RESET = "\x1b[0m"


def _strip(text: str) -> str:
    """``text`` without escapes but SGR and controls but newline and tab, its bidirectional
    controls (a terminal that does bidi obeyed them) and invisible characters spelled out
    (``task_table.SPELLED_OUT``)."""
    kept = _UNSAFE.sub(lambda m: m.group(0) if _SGR.fullmatch(m.group(0)) else "", text)
    return kept.translate(SPELLED_OUT)


def _style_open(text: str) -> bool:
    """Whether ``text`` (sanitised: its only escapes are SGR) leaves a style set: its last
    SGR is not a plain reset."""
    last = text.rfind("\x1b[")
    return last != -1 and text[last:].split("m", 1)[0] not in ("\x1b[", "\x1b[0")


def sanitize(text: str) -> str:
    """``text`` safe for a terminal: SGR colours, newlines and tabs kept, other controls gone,
    and a style it leaves set reset at its end (before its trailing newlines): a conceal
    (``ESC[8m``) or black on black hid what hal printed next, such as the run's status."""
    clean = _strip(text)
    if not _style_open(clean):
        return clean
    body = clean.rstrip("\n")
    return body + RESET + clean[len(body) :]


_LONG_VALUE = re.compile(r"'[^'\n]{200,}'|\"[^\"\n]{200,}\"|\S{200,}")
"""A value of 200 characters or more in a message: quoted (a name with spaces in it) or a
run without spaces (an id)."""
SHOWN_OF_A_LONG_VALUE = 60
"""How much of such a value an error line shows."""


def shorten_values(text: str) -> str:
    """``text`` with each long value (see :data:`_LONG_VALUE`) cut to its first 60 characters
    and ``…``: a 5000-character id echoed back whole buries the line's point and its fix."""

    def cut(match: re.Match[str]) -> str:
        value = match.group(0)
        quote = value[0] if value[0] in "'\"" and value[-1] == value[0] else ""
        return value[:SHOWN_OF_A_LONG_VALUE] + "…" + quote

    return _LONG_VALUE.sub(cut, text)


def error_line(text: str) -> str:
    """``text`` as the one line of ``hal: error:``: sanitised, long values cut, and a line
    break a value carried (a path or name holding ``\\n``) shown escaped, so it stays one line."""
    return breaks_shown(shorten_values(sanitize(text)))


def breaks_shown(line: str) -> str:
    """``line`` (sanitised) kept one line: each line break in it written as ``\\n`` (or
    ``\\r``), a tab as a space; a break the agent put in a name or a message began a line
    of its choosing under hal's, such as a forged ``end: succeeded``."""
    return line.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")


def escape_json_line(line: str) -> str:
    """A JSON line with C1 controls escaped too (JSON only requires C0 to be escaped, but a
    terminal may act on U+0080-U+009F), and the bidirectional and invisible characters
    (``task_table.SPELLED_OUT``), as the ASCII JSON of ``--json`` has them: a terminal that
    does bidi reordered the line, an invisible one hid what a string holds. Valid JSON either
    way, since they only occur inside strings."""
    return _json_unsafe().sub(_json_escape, line)


@functools.cache
def _json_unsafe() -> re.Pattern[str]:
    """What :func:`escape_json_line` escapes (compiled at its first use: ``hal run --events``
    only)."""
    return re.compile("[\\x7f-\\x9f" + "".join(map(chr, SPELLED_OUT)) + "]")


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a code point past U+FFFF as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class TerminalSanitizer:
    """Sanitises a stream; an escape sequence split across chunks is judged whole, and a
    style the stream leaves set is reset by :meth:`flush` (or :meth:`close_style`)."""

    def __init__(self) -> None:
        self._held = ""
        self._open = False

    def feed(self, chunk: str) -> str:
        """The sanitised text of ``chunk`` that is complete so far."""
        text = self._held + chunk
        self._held = ""
        # An escape that starts after the last complete sequence is unfinished: hold it.
        done = 0
        for match in _ESCAPE.finditer(text):
            done = match.end()
        start = text.find("\x1b", done)
        if start != -1 and len(text) - start < _HOLD_MAX:
            text, self._held = text[:start], text[start:]
        return self._emit(_strip(text))

    def flush(self) -> str:
        """Whatever was held back, sanitised, and a reset when a style is left set."""
        held, self._held = self._held, ""
        return self._emit(_strip(held)) + self.close_style()

    def close_style(self) -> str:
        """A reset when the text so far leaves a style set (before hal prints its own)."""
        was, self._open = self._open, False
        return RESET if was else ""

    def _emit(self, clean: str) -> str:
        if "\x1b[" in clean:
            self._open = _style_open(clean)
        return clean


def _one_line(text: str, limit: int) -> str:
    """``text`` (the agent's) as a field of a line hal writes: one line, cut to ``limit``,
    with no escape sequence at all. The agent's colours too: its line break in a tool's name
    began a line of its own under hal's (a fake summary), and its conceal there hid the rest
    of hal's line."""
    text = " ".join(_SGR.sub("", _strip(text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TARGET_KEYS = ("command", "cmd", "file_path", "path", "filePath", "pattern", "url", "query")


def tool_target(data: dict[str, Any]) -> str:
    """What a tool call works on, for one line: its command, file, pattern or URL."""
    for key in _TARGET_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return " ".join(value)
    return json.dumps(data, ensure_ascii=False) if data else ""


def result_summary(output: str) -> str:
    """A tool result in a few words: its first line and how many more there are."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return _one_line(lines[0], 80) + more


class EventRenderer:
    """Writes a run's events as text a person reads (``hal run`` in a terminal)."""

    def __init__(self, out: TextIO, *, color: bool = True, show_output: bool = False) -> None:
        self.out = out
        self.color = color
        self.show_output = show_output
        """Print raw output chunks too (agents whose output has no structure to render)."""
        self._stream = TerminalSanitizer()

    def paint(self, text: str, color: str) -> str:
        """``text`` in ``color`` when colours are on."""
        return f"{color}{text}{RESET}" if self.color else text

    def __call__(self, event: Event | Mapping[str, Any]) -> None:
        """Render one event (events without a line of their own print nothing)."""
        text = self.render(event)
        if text:
            self.out.write(text)
            self.out.flush()

    def render(self, event: Event | Mapping[str, Any]) -> str:
        """The text for one event ("" for none): a model, or its JSON form (the daemon's,
        which the thin ``hal run`` client renders without the models)."""
        data = event if isinstance(event, Mapping) else event.model_dump()
        if data["type"] == "output":
            return self._stream.feed(data["text"]) if self.show_output else ""
        line = self._line(data)
        return self._stream.close_style() + line if line else ""

    def _line(self, data: Mapping[str, Any]) -> str:
        match data["type"]:
            case "agent_text":
                return sanitize(data["text"]).rstrip("\n") + "\n"
            case "tool_call":
                target = _one_line(tool_target(data["input"]), 100)
                return self.paint(f"▸ {_one_line(data['name'], 60)}", DIM) + f" {target}\n"
            case "tool_result":
                if data["is_error"]:
                    return self.paint(f"  ✗ {result_summary(data['output'])}", RED) + "\n"
                return self.paint(f"  ✓ {result_summary(data['output'])}", DIM) + "\n"
            case "message" if data["level"] == "error":
                return self.paint(f"error: {_one_line(data['text'], 300)}", RED) + "\n"
            case "message" if data["level"] == "warning":
                return self.paint(f"warning: {_one_line(data['text'], 300)}", YELLOW) + "\n"
        return ""


def jsonl_writer(out: TextIO) -> Callable[[Event], None]:
    """A callback printing each event as one JSON line (``hal run --events``)."""

    gone = False

    def write(event: Event) -> None:
        nonlocal gone
        if gone:
            return
        try:
            out.write(escape_json_line(event.model_dump_json()) + "\n")
            out.flush()
        except OSError:
            # The reader went away (`hal run --events | head`): the run goes on unseen and
            # brings its work back, as a run's display does (tasks/output.py); the error
            # ended the run, its work not collected. What is left in the buffer goes nowhere.
            from hal9999.cli.echo import to_devnull

            gone = True
            to_devnull(out)

    return write


def shows_raw_output(agent: str) -> bool:
    """Whether the agent's output has no structure to render (command templates, plain-text
    presets), so the rendered view shows its sanitised output as it comes."""
    from hal9999.agents.parsing import JsonLinesParser
    from hal9999.agents.registry import resolve_agent
    from hal9999.errors import HalError

    try:
        return not isinstance(resolve_agent(agent).parser(), JsonLinesParser)
    except HalError:
        return True


async def run_printing_events(
    service: TaskService, task: TaskRecord, given: dict[str, str]
) -> TaskRecord:
    """Run ``task`` in this process, printing every event it records as a JSON line."""
    import asyncio
    import sys

    from hal9999.events.reader import follow_events
    from hal9999.tasks.session import Session

    write = jsonl_writer(sys.stdout)
    run = asyncio.ensure_future(service.run(task.id, given_env=given))
    path = Session(Path(task.session_dir)).events
    async for event in follow_events(path, stop=run.done, poll=0.05):
        write(event)
    return await run
