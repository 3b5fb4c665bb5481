"""The base of each table's SQL mixed into :class:`hal9999.store.Store`: the store's two
ways to the database, which :class:`~hal9999.store.sqlite.Store` gives."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any


class Table:
    """One table's SQL, run through the store it is mixed into."""

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        raise NotImplementedError


def insert_sql(table: str, columns: Sequence[str], *, replace: bool = False) -> str:
    """``INSERT [OR REPLACE] INTO table (columns) VALUES (:column, ...)``: a row is bound by
    its column names."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    values = ", ".join(f":{name}" for name in columns)
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({values})"
