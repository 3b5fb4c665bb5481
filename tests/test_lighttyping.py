"""``hal9999.lighttyping`` makes what ``typing`` makes, for the modules of the thin ``hal run``
that use it instead of ``typing``."""

from __future__ import annotations

import pickle
import typing

import pytest

from hal9999 import lighttyping


def _define(base: type) -> type:
    class Point(base):  # type: ignore[misc, valid-type]
        """A point."""

        x: int
        y: str = "y"
        z: tuple[int, ...] = ()

        @property
        def both(self) -> str:
            """Both."""
            return f"{self.x}{self.y}"

        def moved(self, by: int) -> Point:
            return self._replace(x=self.x + by)  # type: ignore[no-any-return]

    return Point


def test_a_named_tuple_is_typings_own() -> None:
    ours, theirs = _define(lighttyping.NamedTuple), _define(typing.NamedTuple)  # type: ignore[arg-type]
    for cls in (ours, theirs):
        point = cls(1)
        assert point == (1, "y", ())
        assert point.both == "1y" and point.moved(2) == (3, "y", ())
        assert repr(point) == "Point(x=1, y='y', z=())"
        assert point._asdict() == {"x": 1, "y": "y", "z": ()}
        assert isinstance(point, tuple)
    for name in ("_fields", "_field_defaults", "__doc__", "__module__", "__qualname__"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.__mro__[1:] == theirs.__mro__[1:] == (tuple, object)
    assert list(ours.__annotations__) == list(theirs.__annotations__) == ["x", "y", "z"]
    # typing's class notes the function it was written against (`typing.NamedTuple`).
    assert sorted(vars(ours)) == sorted(set(vars(theirs)) - {"__orig_bases__"})


def test_a_named_tuple_pickles_by_its_module() -> None:
    from hal9999.server.runtime import DaemonInfo

    info = DaemonInfo(1, "/s", 2, 3.0)
    assert pickle.loads(pickle.dumps(info)) == info
    assert DaemonInfo.__module__ == "hal9999.server.runtime"


def test_what_typing_refuses_is_refused() -> None:
    for base in (lighttyping.NamedTuple, typing.NamedTuple):
        with pytest.raises(TypeError, match="Non-default namedtuple field b cannot follow"):

            class Bad(base):  # type: ignore[misc, valid-type]
                a: int = 0
                b: int

        with pytest.raises(AttributeError, match="Cannot overwrite NamedTuple attribute _make"):

            class Worse(base):  # type: ignore[misc, valid-type]
                a: int

                def _make(self) -> None: ...


def test_cast_and_protocol_change_nothing_at_run_time() -> None:
    value = object()
    assert lighttyping.cast("int", value) is value

    class Row(lighttyping.Protocol):
        @property
        def id(self) -> str: ...

    assert Row.__mro__ == (Row, lighttyping.Protocol, object)
