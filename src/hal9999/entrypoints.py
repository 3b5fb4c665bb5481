"""The entry points of hal's plugin groups (providers, process managers), found in one scan.

A scan reads every installed package's metadata (~10 M instructions here, issue 16). A
daemon loads a provider and a process manager at every run of every task, an in-process
``hal run`` one of each: one scan serves every group and what it found is kept; a name not
among it scans again (a plugin installed since).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

_scan: Any = None
"""The last scan: every group's entry points (``entry_points()``)."""
_found: dict[str, dict[str, EntryPoint]] = {}
"""Of the last scan, by group and name (the last one wins where a name repeats, as in
``{ep.name: ep for ep in entry_points(group=...)}``)."""


def find_entry_point(group: str, name: str) -> EntryPoint | None:
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
