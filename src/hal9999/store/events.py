"""The ``events`` index and the global event sequence (mixed into the store).

Every event of every task gets a ``gseq`` from one counter row, taken in the same write
transaction that indexes it. SQLite serialises write transactions across processes, so
``gseq`` is unique, never reused (the counter only grows, also over gaps), and increases in
commit order: a reader that has seen ``gseq`` N from the index will only ever see larger
numbers committed after it. That is what lets a consumer resume with "everything after N".
"""

import functools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from hal9999.store.table import Table

ROWS_PER_INSERT = 128
"""Index rows per INSERT statement: 640 parameters, under the 999 of any SQLite."""


@functools.lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    """``INSERT OR IGNORE`` of ``rows`` index rows in one statement."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)
    return f"INSERT OR IGNORE INTO events (task_id, seq, type, ts, gseq) VALUES {values}"


class IndexedEvent(NamedTuple):
    """One row of the event index."""

    gseq: int
    task_id: str
    seq: int
    type: str
    ts: float


class FeedRow(NamedTuple):
    """A row of the global event order: a task event's index row (``body`` None: the body
    is in the task's JSONL file) or a hive event (``task_id`` None, its JSON ``body``)."""

    gseq: int
    task_id: str | None
    seq: int
    type: str
    ts: float
    body: str | None


class EventTable(Table):
    """SQL of the ``events`` index and ``event_counter``, mixed into the store."""

    def record_events(self, task_id: str, rows: Sequence[tuple[int, str, float]]) -> list[int]:
        """Index ``(seq, type, ts)`` rows and return the ``gseq`` given to each, in order.

        One transaction however many rows: the counter moves by ``len(rows)`` at once. A row
        already indexed keeps its number; the one reserved for it stays unused (a gap).
        """
        return self.record_events_of([(task_id, rows)])[0]

    def record_events_of(
        self, batches: Sequence[tuple[str, Sequence[tuple[int, str, float]]]]
    ) -> list[list[int]]:
        """:meth:`record_events` of several tasks' ``(task_id, rows)`` in one transaction
        (a daemon's flusher writes the batches of every task due at once); the
        numbers follow the order of ``batches``, then of their rows."""
        total = sum(len(rows) for _, rows in batches)
        if not total:
            return [[] for _ in batches]
        flat: list[tuple[str, int, str, float]] = [
            (task_id, seq, type_, ts) for task_id, rows in batches for seq, type_, ts in rows
        ]
        with self._write() as conn:
            (end,) = conn.execute(
                "UPDATE event_counter SET value = value + ? WHERE id = 1 RETURNING value",
                (total,),
            ).fetchone()
            first = int(end) - total + 1
            # Many rows per statement: half the cost of a statement per row.
            for start in range(0, total, ROWS_PER_INSERT):
                chunk = flat[start : start + ROWS_PER_INSERT]
                params: list[object] = []
                for gseq, (task_id, seq, type_, ts) in enumerate(chunk, first + start):
                    params += (task_id, seq, type_, ts, gseq)
                conn.execute(_insert_sql(len(chunk)), params)
        numbers: list[list[int]] = []
        for _, rows in batches:
            numbers.append(list(range(first, first + len(rows))))
            first += len(rows)
        return numbers

    def index_events(self, task_id: str, rows: Iterable[tuple[int, str, float]]) -> None:
        """Record ``(seq, type, ts)`` of events; rows already indexed are ignored."""
        self.record_events(task_id, list(rows))

    def forget_events_after(self, task_id: str, seq: int) -> int:
        """Drop index rows of a task above ``seq`` (indexed, then lost by a crash before the
        file write); returns how many."""
        with self._write() as conn:
            return int(
                conn.execute(
                    "DELETE FROM events WHERE task_id = ? AND seq > ?", (task_id, seq)
                ).rowcount
            )

    def events_after(
        self, gseq: int, *, task_id: str | None = None, limit: int = 1000
    ) -> list[IndexedEvent]:
        """Indexed events with a ``gseq`` above ``gseq``, in ``gseq`` order."""
        sql = "SELECT gseq, task_id, seq, type, ts FROM events WHERE gseq > ?"
        params: list[Any] = [gseq]
        if task_id is not None:
            sql += " AND task_id = ?"
            params.append(task_id)
        sql += " ORDER BY gseq LIMIT ?"
        params.append(limit)
        return [
            IndexedEvent(int(r[0]), str(r[1]), int(r[2]), str(r[3]), float(r[4]))
            for r in self._query(sql, params)
        ]

    def feed_after(self, gseq: int, *, limit: int = 1000) -> list[FeedRow]:
        """Task and hive events with a ``gseq`` above ``gseq``, in ``gseq`` order: one
        statement, so one snapshot (two queries could see a later hive event and miss an
        earlier task event committed between them)."""
        rows = self._query(
            "SELECT gseq, task_id, seq, type, ts, NULL FROM events WHERE gseq > ?"
            " UNION ALL SELECT gseq, NULL, 0, type, ts, body FROM hive_events WHERE gseq > ?"
            " ORDER BY 1 LIMIT ?",
            (gseq, gseq, limit),
        )
        return [FeedRow(int(r[0]), r[1], int(r[2]), str(r[3]), float(r[4]), r[5]) for r in rows]

    def last_gseq(self) -> int:
        """The highest ``gseq`` handed out so far (0 when none)."""
        return int(self._query("SELECT value FROM event_counter WHERE id = 1")[0][0])

    def event_count(self, task_id: str, type: str | None = None) -> int:
        """How many events of a task (of one type, when given) are indexed."""
        if type is None:
            rows = self._query("SELECT COUNT(*) FROM events WHERE task_id = ?", (task_id,))
        else:
            rows = self._query(
                "SELECT COUNT(*) FROM events WHERE task_id = ? AND type = ?", (task_id, type)
            )
        return int(rows[0][0])

    def last_event_ts(self, task_id: str, type: str) -> float | None:
        """When the task's last indexed event of ``type`` was recorded (None if never)."""
        # The newest such row by seq, walking the primary key backwards (no type index).
        rows = self._query(
            "SELECT ts FROM events WHERE task_id = ? AND type = ? ORDER BY seq DESC LIMIT 1",
            (task_id, type),
        )
        return float(rows[0][0]) if rows else None

    def last_seq(self, task_id: str) -> int:
        """The highest indexed seq of a task (0 when none)."""
        rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM events WHERE task_id = ?", (task_id,))
        return int(rows[0][0])

    def index_extent(self, task_id: str) -> tuple[int, int]:
        """The highest indexed seq of a task and how many of its rows are indexed, in one
        query ((0, 0) when none): equal when no seq below the highest is missing."""
        rows = self._query(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM events WHERE task_id = ?", (task_id,)
        )
        return int(rows[0][0]), int(rows[0][1])

    def indexed_seqs(self, task_id: str) -> set[int]:
        """Every indexed seq of a task (to find the holes when :meth:`index_extent` shows
        some)."""
        return {
            int(r[0]) for r in self._query("SELECT seq FROM events WHERE task_id = ?", (task_id,))
        }
