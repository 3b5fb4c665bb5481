"""The ``cloud_machines`` table: the machines cloud providers made, for their spend caps.

A machine is reserved (a row with no end) *before* the vendor is asked for it, in one
write transaction that counts first, so concurrent creates in any number of threads or
hal processes on this HAL_HOME never pass the cap together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from hal9999.errors import SpendCapReached
from hal9999.store.table import Table

DAY_S = 86400.0


class CloudMachineTable(Table):
    """SQL of the ``cloud_machines`` table, mixed into :class:`hal9999.store.Store`."""

    def reserve_cloud_machine(
        self,
        provider: str,
        machine_id: str,
        *,
        now: float,
        max_machines: int,
        max_hours_per_day: float,
        reserve_hours: float,
    ) -> None:
        """Record a machine about to be made, or raise :class:`SpendCapReached` when it
        would pass the cap: ``max_machines`` at once, or the UTC day's machine-hours (each
        machine counted at least ``reserve_hours``, the new one included)."""
        with self._write() as conn:
            running, hours = _usage(conn, provider, now, reserve_hours)
            if running >= max_machines:
                raise SpendCapReached(
                    f"{provider}: {running} machines run, the cap is {max_machines} at once",
                    hint=f"wait for one to end, or raise max_machines in [providers.{provider}]",
                )
            if hours + reserve_hours > max_hours_per_day + 1e-9:
                raise SpendCapReached(
                    f"{provider}: {hours:.2f} of {max_hours_per_day:g} machine-hours used "
                    "today; another machine would pass the cap",
                    hint=f"wait for tomorrow (UTC), or raise max_machine_hours_per_day in "
                    f"[providers.{provider}]",
                )
            conn.execute(
                "INSERT OR REPLACE INTO cloud_machines (provider, machine_id, started_at) "
                "VALUES (?, ?, ?)",
                (provider, machine_id, now),
            )

    def end_cloud_machine(self, provider: str, machine_id: str, *, now: float) -> None:
        """Mark a machine gone (no error when unknown or already ended)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE cloud_machines SET ended_at = ? "
                "WHERE provider = ? AND machine_id = ? AND ended_at IS NULL",
                (now, provider, machine_id),
            )

    def open_cloud_machines(self, provider: str) -> list[str]:
        """Ids of the provider's machines not yet ended."""
        rows = self._query(
            "SELECT machine_id FROM cloud_machines WHERE provider = ? AND ended_at IS NULL",
            (provider,),
        )
        return [str(row[0]) for row in rows]

    def open_cloud_machine_starts(self, provider: str) -> dict[str, float]:
        """The provider's machines not yet ended, each with when it was reserved."""
        rows = self._query(
            "SELECT machine_id, started_at FROM cloud_machines "
            "WHERE provider = ? AND ended_at IS NULL",
            (provider,),
        )
        return {str(row[0]): float(row[1]) for row in rows}

    def cloud_usage(
        self, provider: str, *, now: float, reserve_hours: float = 0.0
    ) -> tuple[int, float]:
        """Machines running now, and the UTC day's machine-hours so far."""
        with self._write() as conn:
            return _usage(conn, provider, now, reserve_hours)


def _usage(
    conn: sqlite3.Connection, provider: str, now: float, reserve_hours: float
) -> tuple[int, float]:
    day_start = now - (now % DAY_S)
    rows = conn.execute(
        "SELECT started_at, ended_at FROM cloud_machines WHERE provider = ? "
        "AND (ended_at IS NULL OR ended_at > ?)",
        (provider, day_start),
    ).fetchall()
    running, hours = 0, 0.0
    for started, ended in _rows(rows):
        if ended is None:
            running += 1
        end = now if ended is None else ended
        used = max(0.0, end - max(started, day_start)) / 3600.0
        # A running machine is billed at least what was reserved for it.
        hours += max(used, reserve_hours) if ended is None else used
    return running, hours


def _rows(rows: list[Any]) -> Iterator[tuple[float, float | None]]:
    for row in rows:
        yield float(row[0]), (None if row[1] is None else float(row[1]))
