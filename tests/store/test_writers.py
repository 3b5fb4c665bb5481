"""This process's writers of one database queue on a lock of their own before SQLite's write
lock (issue 16): SQLite's busy handler sleeps 1 to 100 ms a poll, a waiter slept on long
after the lock was free. Counted by what SQLite would refuse, not timed."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from hal9999.store import Store
from hal9999.store import sqlite as sqlite_store
from hal9999.store.sandboxrow import SandboxRow


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


def test_a_writer_held_past_the_busy_timeout_goes_on_to_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that never ends makes the others fail as SQLite's busy timeout did, not hang.
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.2)
    store = Store(tmp_path / "hal.db")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._write():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        now = time.time()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            row = SandboxRow(provider="fake", id="0" * 12, pool_key="fake:x", state="idle",
                             created_at=now, last_used_at=now)  # fmt: skip
            store.put_sandbox(row)
    finally:
        release.set()
        holder.join()
    store.close()
