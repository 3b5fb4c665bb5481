"""The ``gateway_requests`` table: one row per model call through the LLM gateway."""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path (issue 16).
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from pydantic import BaseModel, ConfigDict


class GatewayRequest(BaseModel):
    """One model call as the gateway saw it (no body unless the config asks, then masked)."""

    model_config = ConfigDict(defer_build=True)  # built by the first run that reads one

    id: int | None = None
    task_id: str
    ts: float
    """When the call started (epoch seconds)."""
    method: str
    path: str
    model: str | None = None
    status: int
    """The HTTP status the agent got (a gateway refusal included)."""
    latency_ms: float
    """From the request to the end of the response body."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None
    error: str | None = None
    """A gateway error code (``budget_exceeded``, ``model_not_allowed``, ...) or None."""
    retries: int = 0
    """Upstream attempts the gateway retried (429/529/5xx) before this answer."""
    body: str | None = None


_COLUMNS: tuple[str, ...] = tuple(name for name in GatewayRequest.model_fields if name != "id")


class GatewayTable:
    """SQL of the ``gateway_requests`` table, mixed into :class:`hal9999.store.Store`."""

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        raise NotImplementedError

    def add_gateway_request(self, row: GatewayRequest) -> int:
        """Record one call; returns its id."""
        names = ", ".join(_COLUMNS)
        values = ", ".join(f":{name}" for name in _COLUMNS)
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO gateway_requests ({names}) VALUES ({values})",
                row.model_dump(exclude={"id"}),
            )
            return int(cursor.lastrowid or 0)

    def add_gateway_requests(self, rows: list[GatewayRequest]) -> None:
        """Record several calls in one transaction (the gateway's group commit)."""
        names = ", ".join(_COLUMNS)
        values = ", ".join(f":{name}" for name in _COLUMNS)
        with self._write() as conn:
            conn.executemany(
                f"INSERT INTO gateway_requests ({names}) VALUES ({values})",
                [row.model_dump(exclude={"id"}) for row in rows],
            )

    def gateway_requests(self, task_id: str, *, after: int = 0) -> list[GatewayRequest]:
        """The calls of a task, oldest first, with ids above ``after``."""
        rows = self._query(
            "SELECT * FROM gateway_requests WHERE task_id = ? AND id > ? ORDER BY id",
            (task_id, after),
        )
        return [GatewayRequest.model_validate(dict(zip(r.keys(), r, strict=True))) for r in rows]

    def gateway_spent(self, *, task_id: str | None = None, since: float = 0.0) -> tuple[int, float]:
        """Tokens and dollars spent by one task (or all, since ``since``)."""
        sql = "SELECT COALESCE(SUM(total_tokens), 0), COALESCE(SUM(cost_usd), 0) "
        sql += "FROM gateway_requests WHERE ts >= ?"
        params: list[Any] = [since]
        if task_id is not None:
            sql += " AND task_id = ?"
            params.append(task_id)
        [row] = self._query(sql, params)
        return int(row[0]), float(row[1])

    def gateway_request_stored(self, row: GatewayRequest) -> bool:
        """Whether ``row`` is in the table already (the same task, start, request, status
        and latency: a replayed row an earlier gateway stored before it could say so)."""
        rows = self._query(
            "SELECT 1 FROM gateway_requests WHERE ts = ? AND task_id = ? AND method = ? "
            "AND path = ? AND status = ? AND latency_ms = ? LIMIT 1",
            (row.ts, row.task_id, row.method, row.path, row.status, row.latency_ms),
        )
        return bool(rows)

    def gateway_refused(self, task_id: str, error: str) -> bool:
        """Whether the gateway refused a call of the task with ``error``."""
        rows = self._query(
            "SELECT 1 FROM gateway_requests WHERE task_id = ? AND error = ? LIMIT 1",
            (task_id, error),
        )
        return bool(rows)

    def delete_gateway_requests(self, task_id: str) -> None:
        """Remove a task's calls (with the task)."""
        with self._write() as conn:
            conn.execute("DELETE FROM gateway_requests WHERE task_id = ?", (task_id,))
