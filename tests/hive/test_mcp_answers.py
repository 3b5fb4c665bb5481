"""An MCP tool's answer is bounded: lists are cut to fit and continue on the next call; any
other answer past the bound is withheld in one line."""

from __future__ import annotations

from typing import Any

import pytest
from tests.hive.mcp_client import connect
from tests.support.hive import World

from hal9999.hive import broker
from hal9999.hive.mcp import tools


async def _answer(client: Any, tool: str, **arguments: Any) -> tuple[int, dict[str, Any]]:
    """The length of ``tool``'s answer as the agent gets it, and the answer parsed."""
    import json

    result = await client.call_tool(tool, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, text
    return len(text), json.loads(text)


async def test_an_answer_is_cut_to_a_bounded_size_and_the_rest_comes_on_the_next_call(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An answer waits in the daemon until the agent reads it, and an agent has up to 128
    # calls in flight: inbox answers of 50 messages of 64 KiB of control characters (six
    # characters each in JSON) held 3.5 GB of the daemon for an agent that read none.
    from hal9999.hive import questions

    monkeypatch.setattr(broker, "limits", broker.BrokerLimits(rate_per_minute=0))
    body = "\x01" * broker.MAX_BODY_CHARS  # 393,216 characters of JSON
    for _ in range(6):
        broker.send(world.store, sender="beta", recipient="alpha", body=body)
    for _ in range(3):  # each a message to alpha too
        questions.ask(world.store, asker="beta", question=body[:60_000], to="alpha")
    sent = [m.id for m in broker.inbox(world.store, "alpha")]
    assert len(sent) == 9
    async with connect(world.socks["alpha"]) as alpha:
        size, got = await _answer(alpha, "inbox", include_read=True)
        assert size <= tools.MAX_ANSWER_CHARS and got["note"] == tools.OLDER_LEFT_OUT
        assert [m["id"] for m in got["messages"]] == sent[-1:]  # the newest that fit
        taken: list[str] = []
        while True:  # the rest, a bounded answer at a time, in order, each once
            size, got = await _answer(alpha, "inbox")
            assert size <= tools.MAX_ANSWER_CHARS
            if not got["messages"]:
                break
            taken += [m["id"] for m in got["messages"]]
            more = len(taken) + 1 < len(sent)  # the newest one was taken above
            assert got.get("note") == (tools.MORE if more else None)
        assert taken == sent[:-1]
        size, got = await _answer(alpha, "open_threads")
        assert size <= tools.MAX_ANSWER_CHARS and "note" in got
        assert len(got["questions"]) == 1
