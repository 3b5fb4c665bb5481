"""The tasks table's rows as :class:`TaskRecord` objects and back: its list columns as JSON text,
and the names a write may set."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from hal9999.store.records import TaskRecord

TASK_COLUMNS: tuple[str, ...] = tuple(TaskRecord.model_fields)
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
    return stored(record.model_dump())


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
    return updated, stored(updated.model_dump(include=set(names)))


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
