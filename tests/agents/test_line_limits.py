"""A line too long to parse is skipped whole, and memory stays bounded while it streams."""

from __future__ import annotations

import json

import pytest

from hal9999.agents import parsing
from hal9999.agents.claude import ClaudeStreamParser
from hal9999.events.models import AgentText, Usage

RESULT = json.dumps(
    {"type": "result", "usage": {"input_tokens": 7, "output_tokens": 3}, "total_cost_usd": 0.5}
)


def _text_record(text: str) -> str:
    """A stream-json record that yields an AgentText when parsed."""
    return json.dumps(
        {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
    )


@pytest.fixture(autouse=True)
def _small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "MAX_LINE_CHARS", 1000)


def test_an_oversized_line_is_skipped_and_the_next_one_parsed() -> None:
    parser = ClaudeStreamParser()
    events = []
    huge = _text_record("x" * 5000) + "\n"
    for i in range(0, len(huge), 64):
        events += parser.feed(huge[i : i + 64])
        assert sum(len(p) for p in parser._pending) <= 1000  # never held whole
    events += parser.feed(RESULT + "\n")
    events += parser.close()
    assert not [e for e in events if isinstance(e, AgentText)]
    [usage] = [e for e in events if isinstance(e, Usage)]
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (7, 3, 0.5)


def test_an_oversized_line_in_one_chunk_is_skipped() -> None:
    parser = ClaudeStreamParser()
    short = _text_record("fits")
    events = parser.feed(_text_record("y" * 3000) + "\n" + short + "\n" + RESULT + "\n")
    assert [type(e) for e in events] == [AgentText, Usage]
    assert events[0].text == "fits"  # type: ignore[union-attr]


def test_an_oversized_unterminated_last_line_is_dropped_on_close() -> None:
    parser = ClaudeStreamParser()
    parser.feed(RESULT + "\n")
    parser.feed("{" + "z" * 3000)
    assert parser.close() == []
