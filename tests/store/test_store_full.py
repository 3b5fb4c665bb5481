"""A write the store's disk has no room for is a :class:`DiskFull` (a one-line error every
caller handles: the runner records the task's end, the daemon answers it, the CLI says it),
and the connection it failed on writes again once there is room."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.small_tmpfs import small_tmpfs
from tests.support.store import make_task

from hal9999.errors import DiskFull
from hal9999.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "hal.db") as opened:
        yield opened


def test_a_write_past_the_room_left_is_disk_full_and_the_store_writes_again(
    store: Store,
) -> None:
    """SQLite's "database or disk is full" came out of every write as a bare
    ``sqlite3.OperationalError``: the daemon's runner, which records a failed task's end for
    a :class:`HalError`, left its task ``provisioning`` for good (its follower waited on),
    and the API answered 500 ``internal``."""
    store.insert_task(make_task("aaaa0001"))
    conn = store._db()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # no room for one more page
    with pytest.raises(DiskFull) as raised:
        for n in range(2, 200):
            store.insert_task(make_task(f"aaaa{n:04d}", prompt="x" * 20_000))
    assert "full" in raised.value.one_line() and "\n" not in raised.value.one_line()
    assert raised.value.exit_status == 10
    conn.execute("PRAGMA max_page_count = 1073741823")  # room again
    store.update_task("aaaa0001", status="running")
    assert store.get_task("aaaa0001").status == "running"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only: it mounts one)."""
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        yield disk


def test_on_a_full_disk_a_write_is_disk_full_and_writes_work_once_there_is_room(
    small_disk: Path,
) -> None:
    """A real full disk: small rows fail at the COMMIT that appends them to the WAL (SQLite
    rolls that transaction back itself), and the same connection writes once space is
    freed, as a long-lived daemon's does."""
    with Store(small_disk / "hal.db") as store:
        store.insert_task(make_task("aaaa0001"))
        with (small_disk / "filler").open("wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        with pytest.raises(DiskFull, match="the disk holding it is full"):
            for n in range(2, 5000):  # small rows: each commit appends its pages to the WAL
                store.insert_task(make_task(f"aaaa{n:04d}"))
        (small_disk / "filler").unlink()
        store.update_task("aaaa0001", status="running")
        assert store.get_task("aaaa0001").status == "running"
