"""A second Store opened in a process that already holds the database (the daemon, whose
cloud providers' spend ledgers open their own) must not drop the first one's locks: POSIX
locks go with any close() of the file in the process; another process closing its last
connection then thinks it is the only user, checkpoints and deletes the WAL under us, and
the database ends "malformed"."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from hal9999.store import Store
from hal9999.store.migrations import MIGRATIONS

OTHER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS probe (x)")
conn.execute("INSERT INTO probe VALUES (1)")
conn.close()
"""


def test_opening_the_store_again_keeps_the_locks_this_process_holds(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.journal_mode() == "wal"
        wal = store.path.with_name(store.path.name + "-wal")
        assert wal.exists()
        with Store.open(tmp_path):  # as a spend ledger does inside the daemon
            pass
        other = subprocess.run([sys.executable, "-c", OTHER, str(store.path)],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert other.returncode == 0, other.stderr
        # Still ours: the other process's close saw this one's lock and left the WAL.
        assert wal.exists()
        store.journal_mode()


def test_opening_a_current_store_takes_no_write_lock(tmp_path: Path) -> None:
    # Every open but a database's first finds its schema current: it only reads, so it
    # neither waits behind another process's write transaction nor fails after the busy
    # timeout (it took the write lock to create the migrations table it already had).
    Store.open(tmp_path).close()
    writer = sqlite3.connect(tmp_path / "hal.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
        with Store.open(tmp_path, busy_timeout_s=0.2) as store:  # a failure comes at once
            assert store.schema_version() == MIGRATIONS[-1].version
            assert store.list_tasks() == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()
