"""The ``gateway_requests`` table's SQL, mixed into :class:`hal9999.store.Store`.

Apart from its row model (:class:`hal9999.store.gateway.GatewayRequest`, imported where a row
is read or written): every store has this table, but only a run whose agent calls a model
through the gateway writes to it, so the others never define the model (17 fields, dear to
build).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from hal9999.store.table import Table, insert_sql

if TYPE_CHECKING:
    from hal9999.store.gateway import GatewayRequest


@cache
def _columns() -> tuple[str, ...]:
    """The table's columns but ``id``: the row model's fields, in their order."""
    from hal9999.store.gateway import GatewayRequest

    return tuple(name for name in GatewayRequest.model_fields if name != "id")


class GatewayTable(Table):
    """SQL of the ``gateway_requests`` table, mixed into :class:`hal9999.store.Store`."""

    def add_gateway_request(self, row: GatewayRequest) -> int:
        """Record one call; returns its id."""
        with self._write() as conn:
            cursor = conn.execute(
                insert_sql("gateway_requests", _columns()), row.model_dump(exclude={"id"})
            )
            return int(cursor.lastrowid or 0)

    def add_gateway_requests(
        self,
        rows: list[GatewayRequest],
        opened: Sequence[tuple[str, GatewayRequest]] = (),
        closed: Sequence[str] = (),
    ) -> None:
        """Record several calls in one transaction (the gateway's group commit), with the
        calls that started (``opened``, by key) and the keys of those whose row is in."""
        with self._write() as conn:
            if opened:
                conn.executemany(
                    "INSERT OR REPLACE INTO gateway_open_calls (key, task_id, ts, method, path, "
                    "model) VALUES (?, ?, ?, ?, ?, ?)",
                    [(key, r.task_id, r.ts, r.method, r.path, r.model) for key, r in opened],
                )
            if rows:
                conn.executemany(
                    insert_sql("gateway_requests", _columns()),
                    [row.model_dump(exclude={"id"}) for row in rows],
                )
            if closed:
                conn.executemany(
                    "DELETE FROM gateway_open_calls WHERE key = ?", [(key,) for key in closed]
                )

    def close_interrupted_calls(self) -> int:
        """Record each call left open by a gateway that died (no row of it in
        ``gateway_requests``) as ``interrupted``, status 0; how many there were."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO gateway_requests (task_id, ts, method, path, model, status, "
                "latency_ms, error) SELECT o.task_id, o.ts, o.method, o.path, o.model, 0, 0, "
                "'interrupted' FROM gateway_open_calls o WHERE NOT EXISTS (SELECT 1 FROM "
                "gateway_requests g WHERE g.task_id = o.task_id AND g.ts = o.ts "
                "AND g.method = o.method AND g.path = o.path) ORDER BY o.ts"
            )
            conn.execute("DELETE FROM gateway_open_calls")
            return cursor.rowcount

    def gateway_requests(self, task_id: str, *, after: int = 0) -> list[GatewayRequest]:
        """The calls of a task, oldest first, with ids above ``after``."""
        rows = self._query(
            "SELECT * FROM gateway_requests WHERE task_id = ? AND id > ? ORDER BY id",
            (task_id, after),
        )
        from hal9999.store.gateway import GatewayRequest

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

    def gateway_refused_models(self, task_id: str, error: str) -> list[str]:
        """The models of the task's calls the gateway refused with ``error``, first refused
        first."""
        rows = self._query(
            "SELECT model FROM gateway_requests WHERE task_id = ? AND error = ? AND model <> ''"
            " GROUP BY model ORDER BY MIN(id)",
            (task_id, error),
        )
        return [str(row[0]) for row in rows]

    def delete_gateway_requests(self, task_id: str) -> None:
        """Remove a task's calls (with the task)."""
        with self._write() as conn:
            conn.execute("DELETE FROM gateway_requests WHERE task_id = ?", (task_id,))
            conn.execute("DELETE FROM gateway_open_calls WHERE task_id = ?", (task_id,))
