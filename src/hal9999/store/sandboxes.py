"""The ``sandboxes`` table: what the warm pool holds, so a restart can tell it from orphans."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from hal9999.store.table import Table, insert_sql

if TYPE_CHECKING:
    from hal9999.store.sandboxrow import SandboxRow


@cache
def _columns() -> tuple[str, ...]:
    """The table's columns: the row model's fields, in their order (the model imported on
    first use: :mod:`hal9999.store.sandboxrow`)."""
    from hal9999.store.sandboxrow import SandboxRow

    return tuple(SandboxRow.model_fields)


def _row(row: sqlite3.Row) -> SandboxRow:
    from hal9999.store.sandboxrow import SandboxRow

    return SandboxRow.model_validate(dict(zip(row.keys(), row, strict=True)))


class SandboxTable(Table):
    """SQL of the ``sandboxes`` table, mixed into :class:`hal9999.store.Store`."""

    def put_sandbox(self, row: SandboxRow) -> None:
        """Insert or replace the record of one sandbox."""
        self.put_sandboxes([row])

    def put_sandboxes(self, rows: Sequence[SandboxRow]) -> None:
        """Insert or replace the records of some sandboxes, in order, in one transaction."""
        with self._write() as conn:
            conn.executemany(
                insert_sql("sandboxes", _columns(), replace=True),
                [row.model_dump() for row in rows],
            )

    def update_sandbox(self, provider: str, sandbox_id: str, **fields: Any) -> None:
        """Set some fields of a sandbox record (no error when it is gone)."""
        unknown = sorted(set(fields) - set(_columns()) | ({"provider", "id"} & set(fields)))
        if unknown:
            raise ValueError(f"cannot set sandbox field(s): {', '.join(unknown)}")
        if not fields:
            return
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        with self._write() as conn:
            conn.execute(
                f"UPDATE sandboxes SET {assignments} WHERE provider = :provider AND id = :id",
                {**fields, "provider": provider, "id": sandbox_id},
            )

    def delete_sandbox(self, provider: str, sandbox_id: str) -> None:
        """Forget a sandbox (no error when it is already forgotten)."""
        with self._write() as conn:
            conn.execute(
                "DELETE FROM sandboxes WHERE provider = ? AND id = ?", (provider, sandbox_id)
            )

    def list_sandboxes(self, *, provider: str | None = None) -> list[SandboxRow]:
        """Every recorded sandbox (of one provider, when given), oldest first."""
        if provider is None:
            rows = self._query("SELECT * FROM sandboxes ORDER BY created_at")
        else:
            rows = self._query(
                "SELECT * FROM sandboxes WHERE provider = ? ORDER BY created_at", (provider,)
            )
        return [_row(row) for row in rows]

    def sandboxes_of_task(self, task_id: str) -> Iterator[SandboxRow]:
        """The recorded sandboxes leased to ``task_id``."""
        for row in self._query("SELECT * FROM sandboxes WHERE task_id = ?", (task_id,)):
            yield _row(row)

    def held_by_tasks(
        self, statuses: Iterable[str]
    ) -> list[tuple[str, str, str, int | None, int | None]]:
        """``(task id, provider, sandbox id, runner pid, runner start)`` of each task in one
        of ``statuses`` whose record still names a sandbox (the ``tasks_status`` index)."""
        wanted = list(statuses)
        rows = self._query(
            "SELECT id, provider, sandbox_id, runner_pid, runner_started FROM tasks"
            f" WHERE sandbox_id IS NOT NULL AND status IN ({', '.join('?' * len(wanted))})",
            wanted,
        )
        return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]
