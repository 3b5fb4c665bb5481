"""``hal9999.plainjson`` gives what ``json.dumps`` and ``json.loads`` give, errors included
(the thin ``hal run`` imports no ``json``)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from hal9999 import plainjson

circular: list[Any] = []
circular.append(circular)
DOCS: list[Any] = [
    {}, [], {"a": 1, "b": [1.5, -0.0, 1e300, None, True, False, "é\n\t\"\\\u2028\ud800"]},
    {"nested": {"x": [{"y": {}}]}, "big": 10**30, "neg": -7}, [float("inf"), float("-inf")],
    {1: "int key", 2.5: "float key", None: "none", False: "bool"}, "a string", 3, None,
    {"t": (1, 2)}, {(1, 2): "tuple key"}, {"o": object()}, circular, {"s": {1, 2}},
]  # fmt: skip


def _outcome(call: Any, arg: Any) -> Any:
    try:
        return ("ok", call(arg))
    except Exception as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("doc", DOCS, ids=range(len(DOCS)))
def test_dumps_is_jsons(doc: Any) -> None:
    assert _outcome(plainjson.dumps, doc) == _outcome(json.dumps, doc)


TEXTS = [
    '{"a": 1}', "[1, 2.5, -3e2, null, true, false]", ' {"a": 1}', '{"a": 1}  \n\t\r',
    '{"a": 1} x', '{"a": 1}{}', '{"a": NaN, "b": Infinity, "c": -Infinity}', '{"a": "\\ud800"}',
    '{"a": "\x01"}', "{", "[1,]", "", "1", '"s"', "null", '{"a": {"b": [{"c": "é"}]}}',
    '\ufeff{"a": 1}', '{"a": 1, "a": 2}', "[" * 100000 + "]" * 100000,
]  # fmt: skip


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_loads_is_jsons(text: str) -> None:
    def same(data: bytes | str) -> None:
        ours, theirs = _outcome(plainjson.loads, data), _outcome(json.loads, data)
        if ours[0] == "ok" and isinstance(ours[1], dict) and "a" in ours[1]:
            value = ours[1]["a"]
            if isinstance(value, float) and math.isnan(value):  # nan != nan
                assert math.isnan(theirs[1]["a"])
                return
        assert ours == theirs

    same(text)
    same(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "data",
    [b'{"a": 1}'.decode().encode("utf-16"), b'\xef\xbb\xbf{"a": 1}', b'{"a": "\xff"}', b"{\0}"],
)
def test_loads_of_other_bytes_is_jsons(data: bytes) -> None:
    assert _outcome(plainjson.loads, data) == _outcome(json.loads, data)
