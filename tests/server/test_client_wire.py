"""The daemon client's query string is ``urllib.parse.urlencode``'s (the thin ``hal run``
imports no ``urllib.parse``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from hal9999.server.client import _query

QUERIES: list[dict[str, Any]] = [
    {}, {"after_seq": 0, "wait": 10.0, "wake": "agent"}, {"status": "running,queued", "limit": 5},
    {"force": "1"}, {"name": "a b&c=d/é"}, {"k": ["a", "b c"]}, {"k": []}, {"k": ("x",)},
    {"flag": True}, {"f": 1e-05, "n": -1, "inf": float("inf")}, {"sp ace": "v"}, {"b": b"by tes"},
    {"a": "x", "b": [], "c": "y"},
]  # fmt: skip


@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
def test_the_query_is_urlencodes(query: dict[str, Any]) -> None:
    assert _query(query) == urlencode(query, doseq=True)
