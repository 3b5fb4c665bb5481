"""Persistent records: tasks and the event index, in SQLite (PostgreSQL later).

The names below load on first use, so a light reader (``hal task list``'s thin path) can
import :mod:`hal9999.store.migrations` without the pydantic record models.
"""

from __future__ import annotations

from hal9999.pymodule import lazy_names

TYPE_CHECKING = False  # typing is dear for the thin `hal task list`
if TYPE_CHECKING:
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


__getattr__ = lazy_names(__name__, _HOMES, globals())
"""``Store``, ``TaskRecord``, ...: imported from their module when first asked for."""
