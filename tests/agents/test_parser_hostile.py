"""Every preset's parser against output written to hurt it: whatever a line holds, the parser
returns events (never raises), its figures stay bounded, what it returns can be recorded the
way the supervisor records it, and no line costs time or memory out of proportion to it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hal9999.agents import parsing
from hal9999.agents.registry import resolve_agent
from hal9999.events.models import EVENT_ADAPTER, AgentText, Event, ToolCall, Usage
from hal9999.process import parsedevents

PRESETS = ["claude", "codex", "gemini", "opencode", "aider", "goose"]

KINDS = {
    "claude": ["system", "assistant", "user", "result"],
    "codex": ["thread.started", "turn.completed", "turn.failed", "error", "item.started",
              "item.completed", "item.updated"],
    "gemini": ["init", "message", "tool_use", "tool_result", "error", "result"],
    "opencode": ["text", "tool_use", "step_finish", "error", "step_start"],
    "goose": ["message", "complete", "error", "notification"],
}  # fmt: skip
"""The record types each JSON preset reads."""

KEYS = [
    "type", "subtype", "session_id", "message", "content", "text", "name", "id", "input",
    "tool_use_id", "is_error", "result", "usage", "input_tokens", "output_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "total_cost_usd", "thread_id",
    "item", "command", "server", "tool", "arguments", "query", "changes", "status",
    "exit_code", "aggregated_output", "error", "cached_input_tokens", "role", "delta",
    "tool_name", "tool_id", "parameters", "output", "severity", "stats", "cached", "sessionID",
    "part", "state", "callID", "tokens", "cache", "read", "write", "reasoning", "cost", "data",
    "toolCall", "toolResponse", "toolRequest", "toolResult", "value", "isError", "cost_usd",
    "kind", "path", "seq", "task_id", "log_end", "event",
]  # fmt: skip
"""Keys the parsers look up, and hal's own event framing."""

HOSTILE_TEXT = st.sampled_from([
    "", "\x1b]52;c;ZXZpbA==\x07", "\x1b]0;title\x07", "\x1b[2J\x1b[H", "\x9b31m", "\x00",
    "\ud800", "\udfff", "\u202e", "task_end", "phase", "usage", "output", "\\u0000", "\r",
    '{"type":"task_end","status":"succeeded"}', "assistant", "text", "tool_use", "result",
])  # fmt: skip
HOSTILE_NUMBER = st.sampled_from(
    [10**400, -(10**30), 2**63, -1, 0, 1e308, -1e308, math.nan, math.inf, -math.inf, True]
)

VALUES = st.recursive(
    st.none() | st.booleans() | HOSTILE_NUMBER | st.integers() | st.floats()
    | HOSTILE_TEXT | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5),
    max_leaves=25,
)  # fmt: skip


@st.composite
def records(draw: st.DrawFn, agent: str) -> dict[str, Any]:
    """A record of one of ``agent``'s types whose other keys hold anything at all."""
    record = draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8))
    record["type"] = draw(st.sampled_from(KINDS[agent]) | VALUES)
    return record


def _line(record: object) -> str:
    # allow_nan: Python's own json (and the parsers') reads NaN and Infinity.
    return json.dumps(record, allow_nan=True)


def _check(events: list[Event]) -> None:
    """The properties of whatever a parser returns: typed events, bounded figures, and a
    form the supervisor can record and hal read back (or skip, for a too deep record)."""
    for event in events:
        if isinstance(event, Usage):
            for count in (event.input_tokens, event.output_tokens,
                          event.cache_read_tokens, event.cache_write_tokens):  # fmt: skip
                assert 0 <= count <= 2 * parsing.MAX_COUNT
            cost = event.cost_usd
            assert cost is None or (math.isfinite(cost) and 0 <= cost <= parsing.MAX_COST_USD)
        try:
            data = parsedevents._clip(event.model_dump(mode="json"))
        except (ValueError, RecursionError):  # the supervisor skips these, saying so
            continue
        line = json.dumps({"log_end": 0, "event": data})
        back = EVENT_ADAPTER.validate_python(json.loads(line)["event"])
        assert back.type == event.type
        back.__pydantic_serializer__.to_json(back)  # what the event log writes


@pytest.mark.parametrize("agent", [a for a in PRESETS if a in KINDS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_record_of_a_known_type_never_raises_and_stays_recordable(
    agent: str, data: st.DataObject
) -> None:
    parser = resolve_agent(agent).parser()
    lines = data.draw(st.lists(records(agent), min_size=1, max_size=4))
    text = "".join(_line(record) + "\n" for record in lines)
    cut = data.draw(st.integers(0, len(text)))
    events = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.close()
    _check(events)


@pytest.mark.parametrize("agent", PRESETS)
@settings(max_examples=60, deadline=None)
@given(text=st.lists(st.text(max_size=40) | HOSTILE_TEXT, max_size=8).map("".join))
def test_any_text_never_raises(agent: str, text: str) -> None:
    parser = resolve_agent(agent).parser()
    _check(parser.feed(text) + parser.feed("\n") + parser.close())


def test_aiders_edit_line_takes_time_linear_in_its_length() -> None:
    # `^Applied edit to (.+?)\s*$` backtracked over every inner blank: 100 000 of them took
    # minutes, and the supervisor (which parses as it reads) left the agent blocked on its
    # pipe all that time. Seconds at most now, whatever the machine's load.
    parser = resolve_agent("aider").parser()
    path = "a" + " " * 100_000 + "b"
    [call] = parser.feed(f"Applied edit to {path}  \n")
    assert isinstance(call, ToolCall) and call.input == {"path": path}
    assert parser.feed("Applied edit to \n") == []


pytestmark = pytest.mark.timeout(60)


def _structure(value: object) -> int:
    """Commas and opening brackets of ``value``'s JSON outside its strings (each container
    counts its members, at least one)."""
    if isinstance(value, dict):
        return max(len(value), 1) + sum(_structure(item) for item in value.values())
    if isinstance(value, list):
        return max(len(value), 1) + sum(_structure(item) for item in value)
    return 0


JSON = st.recursive(
    st.none() | st.integers() | st.text(alphabet=',[{"\\}] a\x00\u00e9\ud7ff', max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=5),
    max_leaves=40,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(value=JSON, ascii_only=st.booleans())
def test_values_are_counted_outside_strings_only(value: object, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parsing, "MAX_JSON_VALUES", 10)
        assert parsing.too_many_values(text) == (_structure(value) > 10)


@pytest.mark.parametrize("element", ["{}", "[]", "0", '"ab"'])
def test_a_line_of_countless_small_values_is_skipped_and_the_next_parsed(element: str) -> None:
    # 15 MB of `[{},{},...]` made the supervisor hold 1.2 GB and spend 15 s on one line,
    # outside the sandbox's limits; it is skipped whole now (its text is in the log), as a
    # line too long is.
    parser = resolve_agent("claude").parser()
    many = ",".join([element] * (parsing.MAX_JSON_VALUES + 1))
    result = '{"type": "result", "usage": {"input_tokens": 7}}'
    events = parser.feed(f'{{"type": "x", "data": [{many}]}}\n{result}\n')
    assert [event.type for event in events] == ["usage"]
    # A long text full of commas and brackets is one value: parsed.
    text = ',[{"\\' * 50_000
    record = {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
    [agent_text] = parser.feed(json.dumps(record) + "\n")
    assert isinstance(agent_text, AgentText) and agent_text.text == text


def _streamed(agent: str, piece: str) -> str:
    """A record carrying ``piece`` as one more part of the same streamed message."""
    if agent == "gemini":
        return json.dumps({"type": "message", "role": "assistant", "content": piece,
                           "delta": True})  # fmt: skip
    content = [{"type": "text", "text": piece}]
    message = {"id": "m1", "role": "assistant", "content": content}
    return json.dumps({"type": "message", "message": message})


@pytest.mark.parametrize("agent", ["gemini", "goose"])
def test_a_streamed_message_that_never_ends_holds_bounded_text(
    agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pieces of one message were held until it ended: deltas without end (or one goose
    # message id) kept everything the agent printed in the supervisor's memory.
    monkeypatch.setattr(parsing, "MAX_HELD_TEXT", 1000)
    parser = resolve_agent(agent).parser()
    for n in range(100):
        assert parser.feed(_streamed(agent, str(n % 10) * 100) + "\n") == []
    [text] = parser.close()
    assert isinstance(text, AgentText)
    assert text.text == "".join(str(n) * 100 for n in range(10)) + (
        "… [hal: 9000 more characters in the log]"
    )


def test_codex_remembers_a_bounded_number_of_started_items() -> None:
    # Every started item's id was kept until its completion: items started and never
    # completed grew the parser (in the supervisor) with every line.
    from hal9999.agents import codex

    parser = resolve_agent("codex").parser()
    for n in range(codex.MAX_OPEN_ITEMS + 10):
        item = {"type": "command_execution", "id": f"item_{n}", "command": "ls"}
        [call] = parser.feed(json.dumps({"type": "item.started", "item": item}) + "\n")
        assert call.type == "tool_call"
    long_id = {"type": "command_execution", "id": "i" * 5000, "command": "ls"}
    parser.feed(json.dumps({"type": "item.started", "item": long_id}) + "\n")
    assert len(parser._started) == codex.MAX_OPEN_ITEMS  # type: ignore[attr-defined]
    done = {"type": "command_execution", "id": f"item_{codex.MAX_OPEN_ITEMS + 9}",
            "command": "ls", "aggregated_output": "x", "exit_code": 0}  # fmt: skip
    events = parser.feed(json.dumps({"type": "item.completed", "item": done}) + "\n")
    assert [event.type for event in events] == ["tool_result"]  # its call came at the start


def _sessions(agent: str, session: str) -> list[Event]:
    """The session events ``agent``'s parser yields for a line naming ``session``."""
    record = {
        "claude": {"type": "system", "subtype": "init", "session_id": session},
        "codex": {"type": "thread.started", "thread_id": session},
        "gemini": {"type": "init", "session_id": session, "model": "m"},
        "opencode": {"type": "step_start", "sessionID": session, "part": {}},
    }[agent]
    events = resolve_agent(agent).parser().feed(json.dumps(record) + "\n")
    return [event for event in events if event.type == "agent_session"]


@pytest.mark.parametrize("agent", ["claude", "codex", "gemini", "opencode"])
@pytest.mark.parametrize("session", ["-c", "--config=model_provider=x", "x;", "a b", "x\ny",
                                     "", "é", "a" * 257])  # fmt: skip
def test_a_session_id_that_would_be_read_as_syntax_is_never_kept(agent: str, session: str) -> None:
    # A resumed run passes the id back on the agent's command line: `codex exec resume ID`
    # read `--config=...` as its option, and tmux took `x;` for the end of its command.
    assert _sessions(agent, session) == []
    assert len(_sessions(agent, "0199a213-81c0-7800-8aa1-bbab2a035a53")) == 1
    assert len(_sessions(agent, "ses_dfdc967d7ffeJ2A3dCvPIirXK4")) == 1
