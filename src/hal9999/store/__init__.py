"""Persistent records: tasks and the event index, in SQLite (PostgreSQL later)."""

from hal9999.store.records import RepoKind, SandboxRow, TaskRecord
from hal9999.store.sqlite import Store

__all__ = ["RepoKind", "SandboxRow", "Store", "TaskRecord"]
