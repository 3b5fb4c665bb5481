"""The SQLite store, on real files: pragmas, migrations, tasks, prefixes, event index."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tests.support.store import make_task

from hal9999.errors import AmbiguousTaskId, HalError, TaskNotFound
from hal9999.store import Store
from hal9999.store.migrations import MIGRATIONS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "hal.db") as opened:
        yield opened


def test_open_uses_wal_and_pragmas(tmp_path: Path) -> None:
    with Store(tmp_path / "hal.db") as store:
        assert store.journal_mode() == "wal"
    # The journal mode is persistent: a plain connection sees it too.
    conn = sqlite3.connect(tmp_path / "hal.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_connection_pragmas(store: Store) -> None:
    rows = {
        name: store._query(f"PRAGMA {name}")[0][0]
        for name in ("busy_timeout", "synchronous", "foreign_keys")
    }
    assert rows == {"busy_timeout": 5000, "synchronous": 1, "foreign_keys": 1}


def test_database_file_is_private(tmp_path: Path) -> None:
    Store(tmp_path / "hal.db").close()
    assert stat.S_IMODE((tmp_path / "hal.db").stat().st_mode) == 0o600


def test_migrations_are_recorded_in_order(store: Store) -> None:
    applied = store.applied_migrations()
    assert [(v, n) for v, n, _ in applied] == [(m.version, m.name) for m in MIGRATIONS]
    assert store.schema_version() == MIGRATIONS[-1].version


def test_migration_versions_strictly_increase() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1


def test_reopen_does_not_reapply(tmp_path: Path) -> None:
    path = tmp_path / "hal.db"
    with Store(path) as first:
        first.insert_task(make_task("t1"))
        applied = first.applied_migrations()
    with Store(path) as second:
        assert second.applied_migrations() == applied
        assert second.get_task("t1").id == "t1"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hal.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(HalError, match="newer"):
        Store(path)


def test_unopenable_path_is_a_hal_error(tmp_path: Path) -> None:
    (tmp_path / "hal.db").mkdir()
    with pytest.raises(HalError, match="cannot open the database"):
        Store(tmp_path / "hal.db")


def test_open_home_creates_database(tmp_path: Path) -> None:
    with Store.open(tmp_path / "home") as store:
        assert store.path == tmp_path / "home" / "hal.db"
    assert (tmp_path / "home" / "hal.db").is_file()


def test_insert_and_get_round_trip(store: Store) -> None:
    task = make_task("t1", env_keys=["ANTHROPIC_API_KEY"], timeout_s=60.0, cost_usd=0.25)
    store.insert_task(task)
    assert store.get_task("t1") == task


def test_env_keys_hold_names_never_values() -> None:
    with pytest.raises(ValidationError, match="names only"):
        make_task("t1", env_keys=["API_KEY=sk-secret-value"])
    assert make_task("t1", env_keys=["API_KEY", "_X1"]).env_keys == ["API_KEY", "_X1"]


def test_duplicate_insert_is_refused(store: Store) -> None:
    store.insert_task(make_task("t1"))
    with pytest.raises(ValueError, match="already exists"):
        store.insert_task(make_task("t1"))


def test_get_missing_task(store: Store) -> None:
    with pytest.raises(TaskNotFound) as info:
        store.get_task("nope")
    assert "hal task list" in (info.value.hint or "")


def test_find_task_exact_then_unique_prefix(store: Store) -> None:
    for task_id in ("abc", "abcd12", "abx999", "zz1"):
        store.insert_task(make_task(task_id))
    assert store.find_task("abc").id == "abc"  # exact wins although a prefix of abcd12
    assert store.find_task("abcd").id == "abcd12"
    assert store.find_task("z").id == "zz1"


def test_find_task_ambiguous_prefix_lists_candidates(store: Store) -> None:
    store.insert_task(make_task("abc1"))
    store.insert_task(make_task("abc2"))
    with pytest.raises(AmbiguousTaskId) as info:
        store.find_task("ab")
    assert "abc1" in info.value.message and "abc2" in info.value.message
    assert "more characters" in (info.value.hint or "")
    assert sorted(info.value.details["candidates"]) == ["abc1", "abc2"]


@pytest.mark.parametrize("key", ["q", "", "  "])
def test_find_task_no_match(store: Store, key: str) -> None:
    store.insert_task(make_task("abc1"))
    with pytest.raises(TaskNotFound) as info:
        store.find_task(key)
    assert "hal task list" in (info.value.hint or "")


def test_prefix_is_not_a_like_pattern(store: Store) -> None:
    store.insert_task(make_task("a_b"))
    store.insert_task(make_task("axb"))
    assert store.find_task("a_").id == "a_b"
    with pytest.raises(TaskNotFound):
        store.find_task("a%")


def test_list_tasks_newest_first_with_filters(store: Store) -> None:
    store.insert_task(make_task("old", created_at=1.0, status="succeeded"))
    store.insert_task(make_task("mid", created_at=2.0, status="running"))
    store.insert_task(make_task("new", created_at=3.0, status="failed"))
    assert [t.id for t in store.list_tasks()] == ["new", "mid", "old"]
    assert [t.id for t in store.list_tasks(limit=2)] == ["new", "mid"]
    assert [t.id for t in store.list_tasks(status={"succeeded", "failed"})] == ["new", "old"]
    assert store.list_tasks(status=[]) == []


def test_update_task_sets_fields(store: Store) -> None:
    store.insert_task(make_task("t1"))
    updated = store.update_task("t1", status="running", started_at=5.0, env_keys=["A", "B"])
    assert updated.status == "running"
    assert store.get_task("t1") == updated
    assert store.get_task("t1").env_keys == ["A", "B"]


def test_update_task_rejects_unknown_fields_and_bad_values(store: Store) -> None:
    store.insert_task(make_task("t1"))
    with pytest.raises(ValueError, match="unknown task field"):
        store.update_task("t1", colour="red")
    with pytest.raises(ValueError, match="cannot change"):
        store.update_task("t1", id="t2")
    with pytest.raises(ValidationError):
        store.update_task("t1", exit_code="not a number")
    with pytest.raises(TaskNotFound):
        store.update_task("missing", status="running")
    assert store.get_task("t1") == make_task("t1")


def test_a_status_move_is_one_statement_and_never_writes_a_bad_value(store: Store) -> None:
    # The move read the row in its transaction, then wrote it (two
    # statements); the write's RETURNING gives the row, validated before the commit.
    store.insert_task(make_task("t1", status="running"))
    statements: list[str] = []
    store._db().set_trace_callback(statements.append)
    moved = store.set_status("t1", "collecting", expect="running", exit_code=0, env_keys=["K"])
    store._db().set_trace_callback(None)
    assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "COMMIT"], statements
    assert moved is not None and moved == store.get_task("t1")
    assert (moved.status, moved.exit_code, moved.env_keys) == ("collecting", 0, ["K"])
    assert store.set_status("t1", "succeeded", expect="running") is None  # compare-and-set
    with pytest.raises(ValidationError):
        store.set_status("t1", "succeeded", expect="collecting", exit_code="not a number")
    with pytest.raises(ValueError, match="unknown task field"):
        store.set_status("t1", "succeeded", expect="collecting", colour="red")
    with pytest.raises(TaskNotFound):
        store.set_status("missing", "succeeded", expect="collecting")
    assert store.get_task("t1") == moved


def test_update_writes_only_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "hal.db"
    with Store(path) as a, Store(path) as b:
        a.insert_task(make_task("t1"))
        stale = b.get_task("t1")
        a.update_task("t1", input_tokens=10)
        b.update_task(stale.id, status="running")
        assert a.get_task("t1").input_tokens == 10
        assert a.get_task("t1").status == "running"


def test_delete_task_removes_event_rows(store: Store) -> None:
    store.insert_task(make_task("t1"))
    store.insert_task(make_task("t2"))
    store.index_events("t1", [(1, "phase", 1.0), (2, "output", 2.0)])
    store.index_events("t2", [(1, "phase", 1.0)])
    store.delete_task("t1")
    assert store.all_task_ids() == {"t2"}
    assert store.event_count("t1") == 0
    assert store.event_count("t2") == 1
    with pytest.raises(TaskNotFound):
        store.delete_task("t1")


def test_event_index_counts_and_ignores_duplicates(store: Store) -> None:
    assert store.last_seq("t1") == 0
    store.index_events("t1", [(1, "phase", 1.0), (2, "output", 1.5), (3, "output", 2.0)])
    store.index_events("t1", [(3, "output", 2.0), (4, "task_end", 3.0)])
    assert store.event_count("t1") == 4
    assert store.event_count("t1", "output") == 2
    assert store.event_count("t1", "usage") == 0
    assert store.last_seq("t1") == 4


def test_a_batch_longer_than_one_insert_is_indexed_whole_in_order(store: Store) -> None:
    # Rows go in ROWS_PER_INSERT to a statement; a row already there (in the middle of a
    # statement) is skipped alone and its reserved number left unused, as before.
    from hal9999.store.events import ROWS_PER_INSERT

    store.index_events("t0", [(1, "phase", 0.5)])
    store.record_events("t1", [(ROWS_PER_INSERT + 5, "output", 9.0)])
    rows = [(seq, "output", float(seq)) for seq in range(1, 2 * ROWS_PER_INSERT + 8)]
    numbers = store.record_events("t1", rows)
    assert numbers == list(range(numbers[0], numbers[0] + len(rows)))
    assert numbers[0] == 3
    indexed = store.events_after(0, task_id="t1", limit=10_000)
    later = [e.seq for e in indexed if e.seq != ROWS_PER_INSERT + 5]
    assert later == sorted(later)  # gseq order is the batch's order
    assert {e.seq for e in indexed} == {seq for seq, _, _ in rows}
    by_seq = {e.seq: e for e in indexed}
    assert by_seq[ROWS_PER_INSERT + 5].gseq == 2  # kept its first number
    assert by_seq[ROWS_PER_INSERT + 5].ts == 9.0
    assert by_seq[ROWS_PER_INSERT + 6].gseq == numbers[ROWS_PER_INSERT + 5]
    assert store.last_gseq() == numbers[-1]


def test_the_last_phase_is_the_newest_by_seq_without_a_type_index(store: Store) -> None:
    # Migration 9 dropped the (task, type) index; the lookup walks the primary key backwards.
    store.index_events("t1", [(1, "phase", 1.0), (2, "output", 2.0), (3, "phase", 3.0)])
    store.index_events("t1", [(seq, "output", float(seq)) for seq in range(4, 400)])
    store.index_events("t2", [(1, "phase", 7.0)])
    assert store.last_event_ts("t1", "phase") == 3.0
    assert store.last_event_ts("t2", "phase") == 7.0
    assert store.last_event_ts("t1", "usage") is None
    assert store.last_event_ts("t3", "phase") is None
    names = {row[0] for row in store._query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_task_type" not in names
    plan = " ".join(
        str(row[3])
        for row in store._query(
            "EXPLAIN QUERY PLAN SELECT ts FROM events WHERE task_id = ? AND type = ?"
            " ORDER BY seq DESC LIMIT 1",
            ("t1", "phase"),
        )
    )
    assert "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "hal.db"
    with Store(path) as a, Store(path) as b:
        a.insert_task(make_task("t1"))
        assert b.get_task("t1").id == "t1"
        b.update_task("t1", status="running")
        assert a.get_task("t1").status == "running"


def test_concurrent_writers_on_one_file(tmp_path: Path) -> None:
    # No store exists yet: the writers also race to create and migrate the database.
    path = tmp_path / "hal.db"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with Store(path) as store:
                for i in range(50):
                    store.insert_task(make_task(f"w{n}-{i}", created_at=float(i)))
                    store.index_events(f"w{n}-{i}", [(1, "phase", 1.0)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store(path) as store:
        assert len(store.all_task_ids()) == 200
        assert store.schema_version() == MIGRATIONS[-1].version
        assert len(store.applied_migrations()) == len(MIGRATIONS)


CHILD = """
import sys
from pathlib import Path
from hal9999.store import Store, TaskRecord
with Store(Path(sys.argv[1])) as store:
    for i in range(100):
        store.insert_task(TaskRecord(
            id=f"child-{i}", prompt="p", agent="a", provider="p", process_manager="m",
            repo="r", repo_kind="url", branch="b", status="queued", created_at=float(i),
            session_dir="s"))
"""


def test_another_process_writes_while_this_one_does(tmp_path: Path) -> None:
    path = tmp_path / "hal.db"
    with Store(path) as store:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)])
        for i in range(100):
            store.insert_task(make_task(f"parent-{i}"))
        assert child.wait(timeout=60) == 0
        ids = store.all_task_ids()
    assert len(ids) == 200
    assert {i for i in ids if i.startswith("child-")} == {f"child-{i}" for i in range(100)}


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    store = Store(tmp_path / "hal.db")
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.get_task("t1")


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """The first opens race to switch a new file to WAL; none may fail with "locked"."""
    # Each opener imports the store, says so, and blocks reading a pipe whose end this
    # process then closes: all six wake at once (they spun until a shared start time:
    # ~1.5 s a round and a core each meanwhile).
    opener = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from hal9999.store import Store\n"
        "print('ready', flush=True)\n"
        "os.read(int(sys.argv[2]), 1)\n"  # start together: EOF once the write end closes
        "Store(Path(sys.argv[1])).close()\n"
    )
    for round_ in range(5):
        db = tmp_path / f"hal-{round_}.db"
        gate, release = os.pipe()
        try:
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", opener, str(db), str(gate)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    pass_fds=(gate,),
                )
                for _ in range(6)
            ]
            ready = [p.stdout.readline() if p.stdout else "" for p in procs]
            early = db.exists()  # an open before the release
        finally:
            os.close(gate)
            os.close(release)
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert ready == ["ready\n"] * 6 and not early, errors
        assert [p.returncode for p in procs] == [0] * 6, errors
        with Store(db) as store:
            assert store.journal_mode() == "wal"
            assert store.schema_version() == MIGRATIONS[-1].version


def test_a_writer_waiting_for_the_lock_does_not_hold_up_reads(tmp_path: Path) -> None:
    # The writer would wait an hour for the lock: reads that return within the (generous)
    # bound below, while it waits, were not held up behind it.
    with Store(tmp_path / "hal.db", busy_timeout_s=3600.0) as store:
        store.insert_task(make_task("t1"))
        other = sqlite3.connect(tmp_path / "hal.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        writer = threading.Thread(target=store.update_task, args=("t1",), kwargs={"ref": "x"})
        writer.start()
        time.sleep(0.2)  # the writer now waits in SQLite's busy handler
        read: list[Any] = []

        def reads() -> None:
            read.append(store.get_task("t1").ref)
            read.append(store.list_tasks()[0].id)

        reader = threading.Thread(target=reads, daemon=True)
        reader.start()
        reader.join(120)
        try:
            assert not reader.is_alive(), "reads waited behind a writer"
            assert read == [None, "t1"]
            assert writer.is_alive(), "the writer did not wait for the lock"
        finally:
            other.execute("ROLLBACK")
            writer.join(60)
            other.close()
        assert store.get_task("t1").ref == "x"


def test_empty_json_columns_need_no_json_codec(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most tasks' ``env_keys`` and ``providers`` are empty: written and read without
    ``json`` (22 ``json.loads`` a task in a daemon); others round-trip."""
    import hal9999.store.rows as sqlite_store

    calls: list[str] = []
    real_loads, real_dumps = sqlite_store.json.loads, sqlite_store.json.dumps
    monkeypatch.setattr(sqlite_store.json, "loads", lambda s: calls.append(s) or real_loads(s))
    monkeypatch.setattr(sqlite_store.json, "dumps", lambda v: calls.append(v) or real_dumps(v))
    store.insert_task(make_task("t1"))
    assert store.get_task("t1").env_keys == [] and store.get_task("t1").providers == []
    store.update_task("t1", env_keys=[])
    first, second = store.get_task("t1"), store.get_task("t1")
    first.providers.append("changed")  # a list of its own each read
    assert second.providers == [] and calls == []
    store.update_task("t1", env_keys=["A_KEY"], providers=["p1", "p2"])
    assert store.get_task("t1").env_keys == ["A_KEY"]
    assert store.get_task("t1").providers == ["p1", "p2"]
    assert calls  # those went through json
