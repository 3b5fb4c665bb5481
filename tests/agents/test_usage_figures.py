"""Usage an agent prints is its own claim: bounded, never negative, never NaN, and never a
reason for the parser to stop."""

from __future__ import annotations

import json

import pytest

from hal9999.agents import parsing
from hal9999.agents.claude import ClaudeStreamParser
from hal9999.events.models import AgentText, Usage

HOSTILE_FIGURES = [-5_000_000, 10**400, "1e999", float("nan"), float("inf"), -1e9, 1e300]
"""What an agent can print where a token count or a cost goes (JSON allows big integers,
and Python's parser NaN and Infinity)."""


def test_claimed_usage_figures_are_bounded_never_negative_and_never_stop_the_parser() -> None:
    # A negative or NaN figure lowered (or poisoned) the operator's totals and the hive's
    # budget; Infinity raised OverflowError, which stopped the parser for the rest of the
    # run; 10**400 reached the store, whose integers end at 2**63.
    parser = ClaudeStreamParser()
    for figure in HOSTILE_FIGURES:
        text = json.dumps({"type": "result", "session_id": "s1", "total_cost_usd": figure,
                           "usage": {"input_tokens": figure, "output_tokens": figure}})  # fmt: skip
        [usage] = [e for e in parser.feed(text + "\n") if isinstance(e, Usage)]
        for count in (usage.input_tokens, usage.output_tokens):
            assert 0 <= count <= parsing.MAX_COUNT
        assert usage.cost_usd is None or 0 <= usage.cost_usd <= parsing.MAX_COST_USD
    [text] = parser.feed('{"type": "assistant", "message": {"content": [{"type": "text", '
                         '"text": "still parsed"}]}}\n')  # fmt: skip
    assert isinstance(text, AgentText) and text.text == "still parsed"


def test_aiders_claimed_figures_are_bounded_too() -> None:
    from hal9999.agents.aider import AiderOutputParser

    huge = "9" * 400
    [usage] = AiderOutputParser().feed(
        f"Tokens: {huge} sent, {huge}k received. Cost: ${huge} message, $1.00 session.\n"
    )
    assert isinstance(usage, Usage)
    assert 0 <= usage.input_tokens <= parsing.MAX_COUNT
    assert 0 <= usage.output_tokens <= parsing.MAX_COUNT
    assert usage.cost_usd is None or usage.cost_usd <= parsing.MAX_COST_USD


def _usage_records(figure: object) -> dict[str, list[dict[str, object]]]:
    """Each JSON preset's usage record with ``figure`` at every place a count or cost goes."""
    counts = {"input_tokens": figure, "output_tokens": figure}
    return {
        "claude": [{"type": "result", "total_cost_usd": figure,
                    "usage": {**counts, "cache_read_input_tokens": figure,
                              "cache_creation_input_tokens": figure}}],
        "codex": [{"type": "turn.completed",
                   "usage": {**counts, "cached_input_tokens": figure}}],
        "gemini": [{"type": "result", "stats": {**counts, "cached": figure, "input": figure}},
                   {"type": "result", "stats": {**counts, "cached": figure}}],
        "opencode": [{"type": "step_finish", "part": {"cost": figure, "tokens": {
            "input": figure, "output": figure, "reasoning": figure,
            "cache": {"read": figure, "write": figure}}}}],
        "goose": [{"type": "complete", **counts, "cache_read_input_tokens": figure,
                   "cache_write_input_tokens": figure, "cost_usd": figure}],
    }  # fmt: skip


@pytest.mark.parametrize("agent", ["claude", "codex", "gemini", "opencode", "goose"])
def test_every_presets_claimed_figures_are_bounded(agent: str) -> None:
    # Gemini's `stats.input` was taken as it came whenever it was an int: 10**30 reached
    # the task's row (OverflowError past SQLite's integers), -5 lowered the totals.
    from hal9999.agents.registry import resolve_agent

    for figure in [*HOSTILE_FIGURES, 10**30, -5, True]:
        for record in _usage_records(figure)[agent]:
            parser = resolve_agent(agent).parser()
            usages = [e for e in parser.feed(json.dumps(record) + "\n") if isinstance(e, Usage)]
            assert usages, (agent, record)
            for usage in usages:
                counts = (usage.input_tokens, usage.output_tokens,
                          usage.cache_read_tokens, usage.cache_write_tokens)  # fmt: skip
                assert all(0 <= count <= 2 * parsing.MAX_COUNT for count in counts), counts
                assert usage.cost_usd is None or 0 <= usage.cost_usd <= parsing.MAX_COST_USD
