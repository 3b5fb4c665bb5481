"""The SQLite store: the only place in hal9999 that holds SQL.

One file, ``<home>/hal.db``, in WAL mode so a ``hal serve`` and any number of ``hal``
commands can read and write it at once; writers wait up to ``BUSY_TIMEOUT_S`` for each
other instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from hal9999.errors import AmbiguousTaskId, DiskFull, HalError, HomeError, TaskNotFound
from hal9999.home import HalPaths, not_writable
from hal9999.store import readonly
from hal9999.store.cloud import CloudMachineTable
from hal9999.store.events import EventTable
from hal9999.store.gatewaytable import GatewayTable
from hal9999.store.migrations import MIGRATIONS, Migration
from hal9999.store.records import TaskRecord
from hal9999.store.rows import (
    TASK_COLUMNS,
    check_fields,
    from_row,
    merged,
    stored,
    to_row,
    with_runner_started,
)
from hal9999.store.sandboxes import SandboxTable
from hal9999.store.table import insert_sql
from hal9999.store.writelock import WriteBusy, writers_of

BUSY_TIMEOUT_S = 5.0
"""How long a writer waits for another process's write lock."""

_LIST_HINT = "list tasks with `hal task list`"
_AMBIGUOUS_SHOWN = 10


class _Connection(sqlite3.Connection):
    """A store's connection, known to :data:`_OPEN` (sqlite3's own cannot be weakly
    referenced)."""


_OPEN: weakref.WeakSet[_Connection] = weakref.WeakSet()
"""The store connections of this process not yet freed (see :func:`close_open_stores`)."""


def close_open_stores() -> None:
    """Close every store connection this process still has.

    A connection sits in a reference cycle (its own statement cache), so a store dropped
    without :meth:`Store.close` leaves it to the garbage collector; a process that ends
    without that collection (the CLI freezes its objects at exit) would leave the database's
    pages in the WAL, never checkpointed into ``hal.db``. The last connection to close
    checkpoints the WAL and removes it, as SQLite does for any clean close."""
    for conn in list(_OPEN):
        conn.close()


def no_room(directory: Path) -> bool:
    """Whether the filesystem of ``directory`` has (next to) no space, or no inode (an
    agent's empty files take one each), left for this user."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    root = os.geteuid() == 0
    free, files = (st.f_bfree, st.f_ffree) if root else (st.f_bavail, st.f_favail)
    return free * st.f_frsize < 64 * 1024 or (st.f_files > 0 and files < 16)


RUNNER_FIELDS = ("runner_pid", "runner_started", "sandbox_id")
"""What a task's record says of the run that holds it (see ``Store.update_task``'s
``held_by``)."""


class Store(EventTable, SandboxTable, GatewayTable, CloudMachineTable):
    """Tasks, the event index and pooled sandboxes, in one SQLite database."""

    def __init__(
        self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S, read_only: bool = False
    ) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        """How long a write waits for another writer's lock before it fails."""
        self.read_only = read_only
        """Opened to read a home hal cannot write: every write is a :class:`HomeError`."""
        self._mode: str | None = None
        """The URI mode of a read-only open (:mod:`hal9999.store.readonly`)."""
        self._lock = threading.Lock()
        self._writers = writers_of(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        if read_only:
            self._open_read_only()
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The database holds prompts and repo paths: create it private. SQLite gives
            # the -wal and -shm files the same mode. Only when missing: closing any
            # descriptor of an open database drops every POSIX lock this process holds on
            # it (another Store of the same process, e.g. the daemon's), and a write then
            # corrupts it ("database disk image is malformed").
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            self._set_up()
        except (sqlite3.Error, OSError) as exc:
            self.close()
            damaged = getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT")
            if not damaged and no_room(path.parent):
                # SQLite says "disk I/O error" when its -shm file cannot grow on a full disk.
                raise DiskFull(
                    f"cannot open the database {path}: the disk holding it is full",
                    hint="free space on the filesystem of HAL_HOME",
                ) from exc
            raise HalError(
                f"cannot open the database {path}: {exc}",
                hint=f"move {path} aside (tasks are forgotten, sessions stay on disk) or restore"
                " a backup"
                if damaged
                else "check that HAL_HOME is writable and not on a network filesystem",
            ) from exc
        except BaseException:
            self.close()
            raise

    def _open_read_only(self) -> None:
        try:
            conn, self._mode = readonly.connect(str(self.path))
            conn.close()
            current = self.schema_version()
        except sqlite3.Error as exc:
            self.close()
            raise HalError(
                f"cannot read the database {self.path} of a read-only home: {exc}",
                hint="read it where it can be written, or copy the home to a writable place",
            ) from exc
        latest = MIGRATIONS[-1].version
        if current != latest:
            self.close()
            older = "older" if current < latest else "newer"
            raise HomeError(
                f"the database {self.path} is at schema version {current}, {older} than this "
                f"hal's ({latest}), and its directory is not writable",
                hint=not_writable(self.path.parent).hint,
                path=str(self.path.parent),
            )

    @classmethod
    def open(cls, home: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Store:
        """Open (creating and migrating as needed) the store of a hal home directory."""
        return cls(HalPaths(home).ensure().db, busy_timeout_s=busy_timeout_s)

    @classmethod
    def open_read_only(cls, home: Path) -> Store:
        """Open the store of a home hal cannot write, to read it; its writes fail in one
        line (:func:`hal9999.home.not_writable`)."""
        return cls(HalPaths(home).db, read_only=True)

    def close(self) -> None:
        """Close every connection; further calls fail. Safe to call twice."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _db(self, *, quick: bool = False) -> sqlite3.Connection:
        """This thread's connection. One per thread, so a thread waiting for another
        process's write lock (up to the busy timeout) never holds up reads elsewhere: a
        daemon's event loop keeps reading while a worker thread waits to write. ``quick``: its
        second, for writes that never wait nor checkpoint (the WAL's fsyncs are the others')."""
        name = "quick" if quick else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None or self._closed:
            with self._lock:
                if self._closed:
                    raise ValueError("the store is closed")
                wait = 0 if quick else self.busy_timeout_s
                where = (
                    self.path if self._mode is None else readonly.uri(str(self.path), self._mode)
                )
                conn = sqlite3.connect(
                    where, timeout=wait, isolation_level=None, uri=self._mode is not None,
                    check_same_thread=False, factory=_Connection,
                )  # fmt: skip
                self._conns.append(conn)
                _OPEN.add(conn)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if quick:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            setattr(self._local, name, conn)
        return conn

    @contextmanager
    def _write(self, *, durable: bool = False, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction; IMMEDIATE takes the lock up front, so no upgrade deadlock.

        ``durable`` fsyncs the WAL at this commit (and so every commit before it): in WAL
        mode ``synchronous = NORMAL`` only syncs at checkpoints, which is right for the hot
        path but not for "this task is finished". ``wait=False`` (not with ``durable``):
        raise :class:`WriteBusy` at once when a thread of this process or another process
        holds the write lock, before anything is written.
        """
        if self.read_only:
            raise not_writable(self.path.parent)
        conn = self._db(quick=not wait)
        writers = self._writers
        queued = writers.acquire(timeout=self.busy_timeout_s) if wait else writers.acquire(False)
        if not (wait or queued):
            raise WriteBusy("a thread of this process holds the write lock")
        try:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if wait or not exc.sqlite_errorname.startswith("SQLITE_BUSY"):
                        raise
                    raise WriteBusy(str(exc)) from exc
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self._out_of_room(exc):
                    raise DiskFull(
                        f"cannot write to the database {self.path}: the disk holding it is full",
                        hint="free space on the filesystem of HAL_HOME",
                    ) from exc
                raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")
        finally:
            if queued:
                writers.release()

    def _out_of_room(self, exc: sqlite3.OperationalError) -> bool:
        """Whether SQLite failed a write for want of disk space ("database or disk is full";
        "disk I/O error" when its -shm or -wal file could not grow)."""
        name = getattr(exc, "sqlite_errorname", "")
        if name == "SQLITE_FULL":
            return True
        return name.startswith("SQLITE_IOERR") and no_room(self.path.parent)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self._db().execute(sql, tuple(params)).fetchall()

    def _set_up(self) -> None:
        """WAL mode and migrations, retried while another process holds the database.

        Two processes that open a new file at once both read it in rollback mode and both
        want to switch it to WAL: SQLite breaks that deadlock by failing one of them at once
        with "database is locked", without waiting in the busy handler. So a locked error
        here is retried (with jitter) until the busy timeout.
        """
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                self._db().execute("PRAGMA journal_mode = WAL")
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.03))

    def _migrate(self) -> None:
        latest = MIGRATIONS[-1].version if MIGRATIONS else 0
        try:
            # Read first: a database already at this hal's schema (every open but the first)
            # takes no write lock, so an open never waits behind another process's writer.
            current = self.schema_version()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            with self._write() as conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
            current = self.schema_version()
        if current > latest:
            raise HalError(
                f"the database {self.path} has schema version {current}, newer than this"
                f" hal knows ({latest})",
                hint="upgrade hal9999",
            )
        for migration in MIGRATIONS:
            if migration.version > current:
                self._apply(migration)

    def _apply(self, migration: Migration) -> None:
        with self._write() as conn:
            # Another process may have applied it while this one waited for the lock.
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            ).fetchone()
            if done:
                return
            for statement in migration.statements():
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""
        row = self._query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0]
        return int(row[0])

    def applied_migrations(self) -> list[tuple[int, str, float]]:
        """``(version, name, applied_at)`` of every applied migration, in order."""
        rows = self._query("SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")
        return [(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    def journal_mode(self) -> str:
        """The journal mode SQLite reports (``wal`` unless the filesystem refused it)."""
        return str(self._query("PRAGMA journal_mode")[0][0])

    # -- tasks ----------------------------------------------------------------------------

    def insert_task(self, record: TaskRecord) -> None:
        """Add a new task; its id must be unused."""
        try:
            with self._write() as conn:
                row = {**to_row(record), **with_runner_started({"runner_pid": record.runner_pid})}
                conn.execute(insert_sql("tasks", TASK_COLUMNS), row)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"task {record.id} already exists") from exc

    def get_task(self, task_id: str) -> TaskRecord:
        """The task with exactly this id."""
        task = self.task_or_none(task_id)
        if task is None:
            raise TaskNotFound(f"no task {task_id!r}", hint=_LIST_HINT, task_id=task_id)
        return task

    def task_or_none(self, task_id: str) -> TaskRecord | None:
        """The task with exactly this id, or None when there is none."""
        rows = self._query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return from_row(rows[0]) if rows else None

    def task_status(self, task_id: str) -> str:
        """The status of the task with exactly this id (one column read, no record built)."""
        rows = self._query("SELECT status FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskNotFound(f"no task {task_id!r}", hint=_LIST_HINT, task_id=task_id)
        return str(rows[0][0])

    def find_task(self, id_or_prefix: str) -> TaskRecord:
        """The task with this id, else the only task whose id starts with it."""
        key = id_or_prefix.strip()
        if not key:
            raise TaskNotFound("no task id given", hint=_LIST_HINT)
        rows = self._query("SELECT * FROM tasks WHERE id = ?", (key,))
        if rows:
            return from_row(rows[0])
        rows = self._query(
            "SELECT * FROM tasks WHERE substr(id, 1, ?) = ? ORDER BY created_at DESC",
            (len(key), key),
        )
        if not rows:
            raise TaskNotFound(f"no task id starts with {key!r}", hint=_LIST_HINT, task_id=key)
        if len(rows) > 1:
            ids = [str(row["id"]) for row in rows]
            shown = ", ".join(ids[:_AMBIGUOUS_SHOWN]) + (
                ", ..." if len(ids) > _AMBIGUOUS_SHOWN else ""
            )
            raise AmbiguousTaskId(
                f"task id prefix {key!r} matches {len(ids)} tasks: {shown}",
                hint="type more characters of the task id",
                candidates=ids,
            )
        return from_row(rows[0])

    def list_tasks(
        self, *, status: Collection[str] | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally only those in the given states."""
        sql = "SELECT * FROM tasks"
        params: list[Any] = []
        if status is not None:
            if not status:
                return []
            sql += f" WHERE status IN ({', '.join('?' * len(status))})"
            params.extend(status)
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [from_row(row) for row in self._query(sql, params)]

    def update_task(self, task_id: str, *, held_by: int | None = None, **fields: Any) -> TaskRecord:
        """Set some fields of a task; returns the updated record.

        ``held_by``: the pid of the run writing its own end; ``runner_pid`` and
        ``sandbox_id`` are then left as they are when the task names another runner by now
        (a resume took it since it was stopped: they are that run's). Raises ``ValueError``
        for a name that is not a :class:`TaskRecord` field (or ``id``) and pydantic's
        ``ValidationError`` for a value of the wrong type.
        """
        fields = with_runner_started(fields)
        check_fields(fields)
        with self._write() as conn:
            rows = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchall()
            if not rows:
                raise TaskNotFound(f"no task {task_id!r}", hint=_LIST_HINT, task_id=task_id)
            if held_by is not None and rows[0]["runner_pid"] not in (None, held_by):
                fields = {k: v for k, v in fields.items() if k not in RUNNER_FIELDS}
            if not fields:
                return from_row(rows[0])
            updated, values = merged(rows[0], fields)
            # Only the named columns are written, so concurrent updates of other fields
            # by other processes are not overwritten with stale values.
            assignments = ", ".join(f"{name} = :{name}" for name in fields)
            conn.execute(f"UPDATE tasks SET {assignments} WHERE id = :id", values)
        return updated

    def set_status(
        self,
        task_id: str,
        target: str,
        *,
        expect: str,
        durable: bool = False,
        wait: bool = True,
        **fields: Any,
    ) -> TaskRecord | None:
        """Compare-and-set: move the task from ``expect`` to ``target`` (with ``fields``) in
        one statement; returns the new record, or None when its status was not ``expect``
        (``wait``: see :meth:`_write`).

        Callers check the move against the state table first (:mod:`hal9999.tasks.state`);
        this only guarantees that nobody changed the status in between.
        """
        fields = with_runner_started({**fields, "status": target})
        check_fields(fields)
        values = stored(fields)
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        # The row as written comes back from the write itself (a read of the row
        # in the transaction, then the write, would be two statements a move).
        sql = f"UPDATE tasks SET {assignments} WHERE id = :id AND status = :expect RETURNING *"
        with self._write(durable=durable, wait=wait) as conn:
            rows = conn.execute(sql, {**values, "id": task_id, "expect": expect}).fetchall()
            if not rows:
                if not conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchall():
                    raise TaskNotFound(f"no task {task_id!r}", hint=_LIST_HINT, task_id=task_id)
                return None
            # Validated before the commit: a value of the wrong type is never written.
            return from_row(rows[0])

    def swap_runner(self, task_id: str, seen: int | None, new: int | None) -> TaskRecord | None:
        """Compare-and-set of ``runner_pid``: ``new`` only if it is still ``seen`` (one
        statement); the updated record, or None when another process changed it first (or
        the task is gone). :func:`hal9999.tasks.claim.claim` judges ``seen``."""
        started = with_runner_started({"runner_pid": new})["runner_started"]
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE tasks SET runner_pid = ?, runner_started = ? WHERE id = ?"
                " AND runner_pid IS ? RETURNING *",
                (new, started, task_id, seen),
            ).fetchall()
        return from_row(rows[0]) if rows else None

    def delete_task(self, task_id: str) -> None:
        """Remove a task and its event index rows."""
        with self._write() as conn:
            conn.execute("DELETE FROM events WHERE task_id = ?", (task_id,))
            conn.execute("DELETE FROM gateway_requests WHERE task_id = ?", (task_id,))
            conn.execute("DELETE FROM gateway_open_calls WHERE task_id = ?", (task_id,))
            deleted = conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount
            if not deleted:
                raise TaskNotFound(f"no task {task_id!r}", hint=_LIST_HINT, task_id=task_id)

    def queued_tasks(self, now: float, *, limit: int = 100) -> list[TaskRecord]:
        """Queued tasks due by ``now``: highest priority first, then oldest first."""
        rows = self._query(
            "SELECT * FROM tasks WHERE status = 'queued' AND"
            " (not_before IS NULL OR not_before <= ?)"
            " ORDER BY priority DESC, created_at ASC, rowid ASC LIMIT ?",
            (now, limit),
        )
        return [from_row(row) for row in rows]

    def next_not_before(self) -> float | None:
        """The earliest backoff deadline among queued tasks (None when none waits)."""
        rows = self._query(
            "SELECT MIN(not_before) FROM tasks WHERE status = 'queued' AND not_before IS NOT NULL"
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def all_task_ids(self) -> set[str]:
        """Every task id in the store."""
        return {str(row[0]) for row in self._query("SELECT id FROM tasks")}

    def has_task(self, task_id: str) -> bool:
        """Whether a task with exactly this id exists (one primary-key lookup)."""
        return bool(self._query("SELECT 1 FROM tasks WHERE id = ?", (task_id,)))
