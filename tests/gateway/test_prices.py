"""Prices are looked up once per task and model; a task registered again with other prices
gets the new ones."""

from __future__ import annotations

import pytest

from hal9999.gateway.prices import SHIPPED, PriceBook, lookup, maintained_price, price_of

OPUS_4 = {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75}
OPUS_4_5 = {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_write": 6.25}
SONNET_4 = {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75}
HAIKU_4_5 = {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25}


def test_price_book_caches_per_task_and_forgets() -> None:
    book = PriceBook()
    shipped = book.of("tok-a", {}, "claude-sonnet-4-5-20250929")
    assert shipped is not None and shipped["input"] == 3.0, "longest prefix of the shipped table"
    assert book.of("tok-a", {"claude-sonnet-4-5": {"input": 9.0}}, "claude-sonnet-4-5") == (
        book.of("tok-a", {}, "claude-sonnet-4-5")
    ), "one lookup per task and model"
    mine = {"my-model": {"input": 1.0, "output": 2.0}}
    assert book.of("tok-b", mine, "my-model") == {"input": 1.0, "output": 2.0}
    assert book.of("tok-a", {}, "my-model") is None, "another task's prices are its own"
    book.forget("tok-a")
    assert book.of("tok-a", mine, "my-model") == {"input": 1.0, "output": 2.0}


@pytest.mark.parametrize(
    ("model", "price"),
    [("claude-opus-4-5-20251101", OPUS_4_5), ("claude-opus-4-5", OPUS_4_5),
     ("claude-opus-4-6", OPUS_4_5), ("anthropic/claude-opus-4-6", OPUS_4_5),
     ("claude-opus-4-7", OPUS_4_5), ("claude-opus-4-8", OPUS_4_5),
     ("claude-opus-4-1-20250805", OPUS_4), ("claude-opus-4-20250514", OPUS_4),
     ("claude-opus-4-0", OPUS_4), ("claude-sonnet-4-5-20250929", SONNET_4),
     ("claude-sonnet-4-6", SONNET_4), ("claude-haiku-4-5-20251001", HAIKU_4_5)],
)  # fmt: skip
def test_each_claude_4_model_gets_its_own_price(model: str, price: dict[str, float]) -> None:
    # "claude-opus-4" ($15/$75) priced Opus 4.5 to 4.8 by prefix, which cost $5/$25: three
    # times their spend counted against a cost budget.
    assert price_of(model, SHIPPED) == price


def test_claude_codes_default_model_is_priced_from_the_maintained_data() -> None:
    # Claude Code's default model, which the shipped table never named: every claude task
    # had cost null, and a cost budget refused its first call.
    book = PriceBook()
    price = book.of("tok", {}, "claude-opus-5-5")
    assert price is not None and price["input"] > 0 and price["output"] > price["input"]
    assert book.of("tok", {}, "anthropic/claude-opus-5-5") == price
    assert maintained_price("claude-opus-5-5") == price


def test_the_users_price_comes_first_then_the_maintained_then_the_shipped() -> None:
    mine = {"claude-opus-5-5": {"input": 1.0, "output": 2.0}}
    assert lookup("claude-opus-5-5", mine) == {"input": 1.0, "output": 2.0}
    # A family whose most output per call is shipped keeps it under the maintained price.
    gpt = lookup("gpt-4.1", {})
    assert gpt is not None and gpt["max_output_tokens"] == 32_768
    assert lookup("no-such-model-anywhere", {}) is None
    assert lookup(None, mine) is None
