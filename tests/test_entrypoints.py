"""hal reads the installed packages' entry points itself (importing importlib.metadata is
dear for an in-process ``hal run``): the same entry points, in the same order and
with the same precedence, as :func:`importlib.metadata.entry_points`, or that function's own
scan where sys.path holds what only it reads."""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal9999 import entrypoints
from hal9999.entrypoints import EntryPoint, read_entry_points


def by_group(found: list[Any]) -> dict[str, list[tuple[str, str]]]:
    """Each group's (name, value) pairs, in order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for ep in found:
        groups.setdefault(ep.group, []).append((ep.name, ep.value))
    return groups


def importlib_view() -> dict[str, list[tuple[str, str]]]:
    """What importlib.metadata finds now, by group, in its order."""
    scan = importlib.metadata.entry_points()
    return {
        group: [(ep.name, ep.value) for ep in scan.select(group=group)] for group in scan.groups
    }


@contextmanager
def search_path(paths: list[str]) -> Iterator[None]:
    saved = sys.path[:]
    sys.path[:] = paths
    try:
        yield
    finally:
        sys.path[:] = saved


def test_the_installed_packages_read_as_importlib_metadata_reads_them() -> None:
    found = read_entry_points()
    assert found is not None, "this environment's sys.path is plain directories"
    assert by_group(found) == importlib_view()
    assert ("bwrap", "hal9999.providers.bwrap.provider:BwrapProvider") in by_group(found)[
        "hal9999.providers"
    ]


NAMES = st.sampled_from(["demo", "Demo", "de-mo", "de_mo", "de.mo", "other", "x"])
VERSIONS = st.sampled_from(["", "-1.0", "-2.0", "-1.0-py3"])
SUFFIXES = st.sampled_from([".dist-info", ".egg-info", ".DIST-INFO", ".txt"])
LINE = st.sampled_from(
    [
        "[grp]",
        "[other.grp]",
        "[ spaced ]",
        "",
        "# a comment",
        "  ; not a comment  =  v:w",
        "a = m:f",
        "a=m:g",
        " b =  m.n:c.d [extra] ",
        "c = m",
        "=m:e",
    ]
)


@st.composite
def layouts(draw: st.DrawFn) -> list[list[tuple[str, str | None]]]:
    """sys.path entries, each a list of (directory name, entry_points.txt or None)."""
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        dists = []
        for _ in range(draw(st.integers(0, 4))):
            name = draw(NAMES) + draw(VERSIONS) + draw(SUFFIXES)
            text = draw(st.none() | st.lists(LINE, max_size=6).map("\n".join))
            dists.append((name, text))
        entries.append(dists)
    return entries


@settings(max_examples=150, deadline=None)
@given(layouts(), st.booleans())
def test_made_up_packages_read_as_importlib_metadata_reads_them(
    layout: list[list[tuple[str, str | None]]], missing: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, "nowhere")] if missing else []
        for n, dists in enumerate(layout):
            root = Path(tmp, str(n))
            root.mkdir()
            for name, text in dists:
                if (root / name).exists():
                    continue
                if text is None and name.endswith(".egg-info"):
                    (root / name).write_text("Metadata-Version: 1.0\n")  # a PKG-INFO file
                    continue
                (root / name).mkdir()
                if text is not None:
                    (root / name / "entry_points.txt").write_text(text)
            paths.append(str(root))
        with search_path(paths):
            found = read_entry_points()
            if found is None:
                return  # importlib.metadata scans (a name only METADATA gives)
            assert by_group(found) == importlib_view()


def test_a_zip_on_sys_path_is_left_to_importlib_metadata(tmp_path: Path) -> None:
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("demo-1.0.dist-info/METADATA", "Name: demo\nVersion: 1.0\n")
        zipped.writestr("demo-1.0.dist-info/entry_points.txt", "[grp]\na = m:f\n")
    with search_path([str(archive)]):
        assert read_entry_points() is None
        assert [ep.name for ep in entrypoints.entry_points().select(group="grp")] == ["a"]


def test_another_finder_of_distributions_is_left_to_importlib_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Finder:
        @staticmethod
        def find_distributions(*args: Any, **kwargs: Any) -> list[Any]:
            return []

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder])
    assert read_entry_points() is None


def test_an_entry_point_loads_as_importlib_metadata_loads_it() -> None:
    for value in ("os.path:join", "os:path.join", "os.path", "os.path:join [extra]"):
        ours = EntryPoint("n", value, "g").load()
        assert ours is importlib.metadata.EntryPoint("n", value, "g").load()
    with pytest.raises(ImportError):
        EntryPoint("n", "not a value", "g").load()
