"""The tasks table's rows as :class:`TaskRecord` objects and back: its list columns as JSON text,
and the names a write may set."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from hal9999.store.records import TaskRecord

TASK_COLUMNS: tuple[str, ...] = tuple(TaskRecord.model_fields)
_STORE_ONLY = frozenset(name for name, f in TaskRecord.model_fields.items() if f.exclude)
_JSON_COLUMNS = ("env_keys", "providers")


def dumps(value: Any) -> str:
    """A list column's value as the table stores it (JSON text)."""
    # Most rows hold empty lists: those need no JSON codec (a daemon reads
    # many such columns a task, each a json.loads otherwise).
    return "[]" if value == [] else json.dumps(value)


def loads(text: str) -> Any:
    """A list column's value as the table stores it, read back."""
    return [] if text == "[]" else json.loads(text)


def to_row(record: TaskRecord) -> dict[str, Any]:
    """Every column of ``record``, as the table stores them."""
    return stored({**record.model_dump(), **_store_only(record, TASK_COLUMNS)})


def _store_only(record: TaskRecord, names: Iterable[str]) -> dict[str, Any]:
    """Of ``names``, the fields no dump of a record shows but the table keeps."""
    return {name: getattr(record, name) for name in names if name in _STORE_ONLY}


def with_runner_started(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields``, and when they set ``runner_pid``, when that process started with it."""
    if "runner_pid" not in fields or "runner_started" in fields:
        return fields
    from hal9999 import procs

    pid = fields["runner_pid"]
    return {**fields, "runner_started": procs.started(pid) if pid else None}


def row_data(row: sqlite3.Row) -> dict[str, Any]:
    """A row's columns by name, list columns decoded (not yet validated)."""
    data = dict(zip(row.keys(), row, strict=True))
    for name in _JSON_COLUMNS:
        data[name] = loads(data[name])
    return data


def from_row(row: sqlite3.Row) -> TaskRecord:
    """The validated record a row holds."""
    return TaskRecord.model_validate(row_data(row))


def merged(row: sqlite3.Row, fields: dict[str, Any]) -> tuple[TaskRecord, dict[str, Any]]:
    """The record ``row`` holds with ``fields`` changed, validated once (not the row, then
    the row with the fields: a task's every step writes its row); and the
    changed columns (with ``id``) as the table stores them."""
    updated = TaskRecord.model_validate({**row_data(row), **fields})
    names = (*fields, "id")
    dumped = {**updated.model_dump(include=set(names)), **_store_only(updated, names)}
    return updated, stored(dumped)


def stored(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` by column name as the table stores them (list columns as JSON text)."""
    return {k: dumps(v) if k in _JSON_COLUMNS else v for k, v in values.items()}


def check_fields(fields: dict[str, Any]) -> None:
    """Refuse a name that is not a :class:`TaskRecord` field, and the task's id."""
    unknown = sorted(set(fields) - set(TASK_COLUMNS))
    if unknown:
        raise ValueError(f"unknown task field(s): {', '.join(unknown)}")
    if "id" in fields:
        raise ValueError("a task's id cannot change")
