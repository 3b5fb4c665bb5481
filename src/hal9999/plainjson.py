"""``json.dumps`` and ``json.loads`` with their defaults, from the C accelerator that
:mod:`json` itself uses, without importing :mod:`json` (and the ``re`` it compiles its
patterns with) where the input is the ordinary kind.

The thin ``hal run`` client (:mod:`hal9999.server.client`) exchanges a few JSON documents
with the daemon; ``json`` and ``re`` (with ``enum``) would be a large share of its
start. The results are ``json``'s own: the same encoder and scanner objects
``json.dumps``/``json.loads`` build, with the same settings; anything off the plain path (an
object ``json`` cannot encode, a document that is not an object or array of UTF-8, one that
does not parse) is handed to :mod:`json` itself, which returns the same value or raises its
own error. ``tests/test_plainjson.py`` compares them.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from typing import Any


class _NotPlain(Exception):
    """Something only :mod:`json` itself encodes (or refuses in its own words)."""


def _default(obj: object) -> object:
    raise _NotPlain


_NAN = float("nan")
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": _NAN}


class _Decoder:
    """The settings of ``json.JSONDecoder()`` that its scanner reads."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_SCAN = _json.make_scanner(_Decoder())  # type: ignore[arg-type]  # reads only these
_WHITESPACE = " \t\n\r"
"""What ``json.decoder.WHITESPACE`` matches."""


def dumps(obj: object) -> str:
    """``json.dumps(obj)``."""
    if type(obj) is dict or type(obj) is list:
        # json.JSONEncoder()'s, made afresh as json makes it: markers (check_circular),
        # default, ensure_ascii's encoder, indent, the key and item separators, sort_keys,
        # skipkeys, allow_nan.
        encode = _json.make_encoder(
            {}, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
        )
        try:
            return "".join(encode(obj, 0))
        except (_NotPlain, TypeError, ValueError, RecursionError):
            pass  # json says what is wrong with it (or encodes what only it can)
    import json

    return json.dumps(obj)


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``."""
    text = None
    if isinstance(data, str):
        text = data if data[:1] in ("{", "[") else None
    elif data[:1] in (b"{", b"[") and b"\0" not in data[:4]:
        # An object or array in UTF-8: json.detect_encoding's answer for these bytes.
        try:
            text = data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            pass
    if text is not None:
        try:
            obj, end = _SCAN(text, 0)
        except (StopIteration, ValueError, RecursionError):
            pass  # json says what is wrong with it
        else:
            if not text[end:].strip(_WHITESPACE):
                return obj
    import json

    return json.loads(data)
