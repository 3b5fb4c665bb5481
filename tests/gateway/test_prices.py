"""Prices are looked up once per task and model; a task registered again with other prices
gets the new ones."""

from __future__ import annotations

from hal9999.gateway.prices import PriceBook


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
