"""``typing.NamedTuple``, ``typing.Protocol`` and ``typing.cast`` for modules the thin
``hal run`` client imports, without importing :mod:`typing`.

``typing`` (and the ``re`` and ``enum`` it brings) is a large share of the start of a
``hal run`` through a running ``hal serve`` before its ``POST``. A
module of that path imports these names as::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from hal9999.lighttyping import NamedTuple

so the type checker sees ``typing``'s own. At run time :data:`NamedTuple` makes the class
``typing.NamedTuple`` makes (``collections.namedtuple`` with the class body's methods,
properties, docstring and defaults), its ``__annotations__`` left as the class body wrote
them; :data:`Protocol` is a plain base class (a protocol is for the type checker: nothing
checks one with ``isinstance``); :func:`cast` returns its value, as ``typing.cast``.
``tests/test_lighttyping.py`` compares them with ``typing``'s.
"""

from __future__ import annotations

import collections

_PROHIBITED = frozenset({
    "__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults", "_make",
    "_replace", "_asdict", "_source",
})  # fmt: skip
"""What ``typing.NamedTuple`` refuses a class body to define."""
_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})
"""What the class body defines that the named tuple keeps its own of."""


class _NamedTupleMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
        if bases != (_NamedTuple,):
            raise TypeError("can only inherit from a NamedTuple type")
        annotations = dict(ns.get("__annotations__", {}))  # type: ignore[call-overload]
        named: list[str] = []  # the fields with a default, in order (typing's check)
        for field in annotations:
            if field in ns:
                named.append(field)
            elif named:
                raise TypeError(
                    f"Non-default namedtuple field {field} cannot follow default field"
                    f"{'s' if len(named) > 1 else ''} {', '.join(named)}"
                )
        defaults = [ns[n] for n in named]
        fields, module = list(annotations), str(ns["__module__"])
        cls = collections.namedtuple(name, fields, defaults=defaults, module=module)  # type: ignore[misc]
        cls.__annotations__ = cls.__new__.__annotations__ = annotations
        for key, value in ns.items():
            if key in _PROHIBITED:
                raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
            if key not in _SPECIAL and key not in cls._fields:
                setattr(cls, key, value)
        return cls


_NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
NamedTuple = _NamedTuple
"""The base of a class statement making a named tuple, as ``typing.NamedTuple``."""


class Protocol:
    """The base of a protocol class; at run time a plain base class."""


def cast(typ: object, val: object) -> object:
    """``val``, as ``typing.cast``."""
    return val
