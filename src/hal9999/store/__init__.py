"""Persistent records: tasks and the event index, in SQLite (PostgreSQL later).

The names below load on first use, so a light reader (``hal task list``'s thin path) can
import :mod:`hal9999.store.migrations` without the pydantic record models.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is dear for the thin `hal task list`
if TYPE_CHECKING:
    from typing import Any

    from hal9999.store.records import RepoKind, TaskRecord
    from hal9999.store.sandboxrow import SandboxRow
    from hal9999.store.sqlite import Store

__all__ = ["RepoKind", "SandboxRow", "Store", "TaskRecord"]

_HOMES = {
    "RepoKind": "hal9999.store.records",
    "SandboxRow": "hal9999.store.sandboxrow",
    "TaskRecord": "hal9999.store.records",
    "Store": "hal9999.store.sqlite",
}


def __getattr__(name: str) -> Any:
    """``Store``, ``TaskRecord``, ...: imported from their module when first asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
