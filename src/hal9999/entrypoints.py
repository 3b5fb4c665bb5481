"""The entry points of hal's plugin groups (providers, process managers, agents), found in one
scan.

A scan reads every installed package's metadata. A
daemon loads a provider and a process manager at every run of every task, an in-process
``hal run`` one of each: one scan serves every group and what it found is kept; a name not
among it scans again (a plugin installed since).

The scan reads the ``entry_points.txt`` of each distribution itself, in the order and with
the precedence of :func:`importlib.metadata.entry_points` (the first distribution of a name
on ``sys.path`` counts, the last entry point of a name in a group wins), because importing
:mod:`importlib.metadata` (email, zipfile, csv, ...) is dear for an in-process ``hal run``
that reads three lines of one file. Where ``sys.path`` holds something that module reads
differently (a zip or an egg, a directory it cannot list, a finder of distributions other
than the path's, a name its metadata must give), it does the scan.
``tests/test_entrypoints.py`` compares the two on the installed packages and on made-up ones.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Protocol


class EntryPointLike(Protocol):
    """What hal uses of an entry point (:class:`importlib.metadata.EntryPoint` is one)."""

    @property
    def name(self) -> str:
        """Its name in the group."""

    @property
    def value(self) -> str:
        """``module:attr`` (``[extras]`` allowed, ignored)."""

    @property
    def group(self) -> str:
        """The group it is registered in."""

    def load(self) -> Any:
        """The object it names, its module imported."""


class EntryPoint:
    """An entry point read from a distribution's ``entry_points.txt``; loads as
    :meth:`importlib.metadata.EntryPoint.load` does."""

    __slots__ = ("group", "name", "value")

    def __init__(self, name: str, value: str, group: str) -> None:
        self.name = name
        self.value = value
        self.group = group

    def load(self) -> Any:
        """Import the module the value names and return its attribute."""
        import importlib

        match = re.match(r"([\w.]+)\s*(:\s*([\w.]+)\s*)?(\[.*\]\s*)?$", self.value)
        if match is None:
            raise ImportError(f"entry point {self.name!r} names no module: {self.value!r}")
        found: Any = importlib.import_module(match.group(1))
        for attr in filter(None, (match.group(3) or "").split(".")):
            found = getattr(found, attr)
        return found

    def __repr__(self) -> str:
        return f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r})"


class Scan:
    """Every group's entry points of one scan, in scan order."""

    def __init__(self, found: list[EntryPoint]) -> None:
        self.found = found

    def select(self, *, group: str) -> Iterator[EntryPoint]:
        """The entry points of ``group``."""
        return (ep for ep in self.found if ep.group == group)


_DIST_SUFFIXES = (".dist-info", ".egg-info")


def _normalize(name: str) -> str:
    """A distribution's name as importlib.metadata compares them (``Prepared.normalize``)."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def read_entry_points() -> list[EntryPoint] | None:
    """Every installed distribution's entry points, in :func:`importlib.metadata.entry_points`'s
    order; None where only that function reads them as it does."""
    from importlib.machinery import PathFinder

    finders = [f for f in sys.meta_path if getattr(f, "find_distributions", None) is not None]
    if finders != [PathFinder]:
        return None  # PathFinder's is importlib.metadata's reading of sys.path
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for root in sys.path:
        if not isinstance(root, str) or os.path.basename(root).lower().endswith(".egg"):
            return None
        try:
            children = os.listdir(root or ".")
        except FileNotFoundError:
            continue  # nothing there, not a zip either
        except OSError:
            return None  # a zip, or a directory importlib.metadata's own way skips
        # (importlib.metadata groups a directory's distributions by name first: the first of
        # each name is the one it keeps either way.)
        for child in children:
            stem, suffix = os.path.splitext(child)
            if suffix not in _DIST_SUFFIXES:
                if suffix.lower() in _DIST_SUFFIXES:
                    return None  # named by its METADATA there
                continue
            name = _normalize(stem.partition("-")[0])
            if name in seen:
                continue  # an earlier distribution of that name hides it
            seen.add(name)
            text = _read(os.path.join(root, child, "entry_points.txt"))
            entries = _parse(text) if text is not None else []
            if entries is None:
                return None
            found.extend(entries)
    return found


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None


def _parse(text: str) -> list[EntryPoint] | None:
    """An ``entry_points.txt``'s entries (importlib.metadata's ``Sectioned`` reading); None
    for a line it would refuse."""
    group: str | None = None
    entries: list[EntryPoint] = []
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line.strip("[]")
            continue
        if group is None:
            continue
        name, equals, value = line.partition("=")
        if not equals:
            return None
        entries.append(EntryPoint(name.strip(), value.strip(), group))
    return entries


def entry_points() -> Any:
    """Every group's entry points (an object with ``select(group=...)``): read here, or by
    :func:`importlib.metadata.entry_points` where only it reads them right."""
    found = read_entry_points()
    if found is None:
        from importlib.metadata import entry_points as scan

        return scan()
    return Scan(found)


def group_entry_points(group: str) -> Iterable[EntryPointLike]:
    """The entry points of ``group``, scanned now."""
    selected: Iterable[EntryPointLike] = entry_points().select(group=group)
    return selected


_scan: Any = None
"""The last scan: every group's entry points (:func:`entry_points`)."""
_found: dict[str, dict[str, EntryPointLike]] = {}
"""Of the last scan, by group and name (the last one wins where a name repeats, as in
``{ep.name: ep for ep in entry_points(group=...)}``)."""


def scanned_names(group: str) -> list[str]:
    """The names ``group`` had in the last scan, sorted (a scan now when there was none):
    what a refusal of an unknown name lists, right after the lookup that scanned again."""
    found = _found.get(group)
    if found is None:
        return sorted({ep.name for ep in group_entry_points(group)})
    return sorted(found)


def find_entry_point(group: str, name: str) -> EntryPointLike | None:
    """The entry point registered as ``name`` in ``group``; None when no package has one."""
    global _scan
    found = _found.get(group)
    if found is None and _scan is not None:  # the group's first lookup since that scan
        found = _found[group] = {ep.name: ep for ep in _scan.select(group=group)}
    if found is None or name not in found:
        _scan = entry_points()
        _found.clear()
        found = _found[group] = {ep.name: ep for ep in _scan.select(group=group)}
    return found.get(name)
