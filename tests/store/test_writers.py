"""This process's writers of one database queue on a lock of their own before SQLite's write
lock: SQLite's busy handler sleeps 1 to 100 ms a poll, a waiter slept on long
after the lock was free. Counted by what SQLite would refuse, not timed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from tests.support.store import make_task

from hal9999.store import Store
from hal9999.store.sandboxrow import SandboxRow
from hal9999.store.writelock import WriteBusy


def test_writers_of_one_process_never_meet_sqlites_busy_handler(tmp_path: Path) -> None:
    # Each thread's connection with no busy handler at all: a writer that found another's
    # transaction open would fail "database is locked" at once. 8 threads, two Stores on the
    # one file (the lock is the database's, not a Store's), 40 writes each.
    stores = [Store(tmp_path / "hal.db"), Store(tmp_path / "hal.db")]
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        store = stores[n % 2]
        store._db().execute("PRAGMA busy_timeout = 0")
        start.wait()
        try:
            for i in range(40):
                now = time.time()
                store.put_sandbox(SandboxRow(provider="fake", id=f"{n:02d}{i:010d}",
                                             pool_key="fake:x", state="idle", created_at=now,
                                             last_used_at=now))  # fmt: skip
        except sqlite3.OperationalError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(stores[0].list_sandboxes()) == 8 * 40
    for store in stores:
        store.close()


@contextmanager
def held(lock: AbstractContextManager[object]) -> Iterator[None]:
    """``lock`` held by another thread of this process while the block runs."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(60)
    try:
        yield
    finally:
        release.set()
        holder.join()


def test_a_writer_held_past_the_busy_timeout_goes_on_to_sqlite(tmp_path: Path) -> None:
    # A writer that never ends makes the others fail as SQLite's busy timeout did, not hang.
    store = Store(tmp_path / "hal.db", busy_timeout_s=0.2)
    with held(store._write()), pytest.raises(sqlite3.OperationalError, match="locked"):
        now = time.time()
        row = SandboxRow(provider="fake", id="0" * 12, pool_key="fake:x", state="idle",
                         created_at=now, last_used_at=now)  # fmt: skip
        store.put_sandbox(row)
    store.close()


def test_a_move_told_not_to_wait_is_refused_while_another_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    # A daemon's moves that are not durable are tried on its event loop,
    # which must never wait for the lock (another process's, or a thread's of its own).
    with Store(tmp_path / "hal.db") as store:
        store.insert_task(make_task("t1", status="running"))
        other = sqlite3.connect(tmp_path / "hal.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(WriteBusy):
                store.set_status("t1", "collecting", expect="running", wait=False)
        finally:
            other.execute("ROLLBACK")
            other.close()
        with held(store._writers), pytest.raises(WriteBusy):  # a thread of this process
            store.set_status("t1", "collecting", expect="running", wait=False)
        assert store.get_task("t1").status == "running"
        moved = store.set_status("t1", "collecting", expect="running", wait=False)
        assert moved is not None and moved.status == "collecting"
        # That connection never checkpoints: the WAL's syncs are the waiting writers'.
        assert store._db(quick=True).execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
