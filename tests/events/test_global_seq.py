"""The global event sequence: unique and increasing across tasks, processes and restarts,
in commit order (a reader resuming "after N" misses nothing), and one writer at a time per
task file even across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from hal9999.events.log import EventLog
from hal9999.events.models import Event, Output, Phase
from hal9999.events.reader import read_events
from hal9999.store import Store

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hal9999.events.log import EventLog
    from hal9999.events.models import Output
    from hal9999.store import Store
    db, path, task, count, go = sys.argv[1:6]
    while not Path(go).exists():
        time.sleep(0.001)
    with Store(Path(db)) as store, EventLog(Path(path), task, store=store, index_batch=64) as log:
        for n in range(int(count)):
            log.emit(Output(text=f"{task} {n}"))
            if n % 97 == 0:
                time.sleep(0.001)
    """
)


def start_writers(
    tmp_path: Path, jobs: list[tuple[str, str]], count: int
) -> list[subprocess.Popen[bytes]]:
    go = tmp_path / "go"
    db = str(tmp_path / "hal.db")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db, str(tmp_path / f"{file}.jsonl"), task,
             str(count), str(go)]
        )
        for file, task in jobs
    ]  # fmt: skip
    time.sleep(0.3)
    go.touch()
    return procs


def test_gseq_is_unique_and_resumable_across_processes(tmp_path: Path) -> None:
    Store(tmp_path / "hal.db").close()
    count = 1500
    jobs = [(f"t{i}", f"t{i}") for i in range(4)]
    procs = start_writers(tmp_path, jobs, count)
    # A consumer resuming with "everything after the last gseq I saw" while they write.
    seen: list[int] = []
    with Store(tmp_path / "hal.db") as store:
        while any(p.poll() is None for p in procs):
            batch = store.events_after(seen[-1] if seen else 0, limit=10_000)
            seen += [row.gseq for row in batch]
            time.sleep(0.002)
        assert all(p.wait() == 0 for p in procs)
        seen += [row.gseq for row in store.events_after(seen[-1] if seen else 0, limit=10**6)]
        indexed = [row.gseq for row in store.events_after(0, limit=10**6)]
    on_disk = []
    for file, _task in jobs:
        events = read_events(tmp_path / f"{file}.jsonl")
        assert [e.seq for e in events] == list(range(1, count + 1))
        gseqs = [e.gseq for e in events]
        assert gseqs == sorted(gseqs) and 0 not in gseqs  # increasing within a task
        on_disk += gseqs
    assert len(on_disk) == len(set(on_disk)) == 4 * count  # unique across tasks
    assert sorted(on_disk) == indexed
    assert seen == indexed  # the resuming reader missed nothing and saw each once, in order


def test_two_processes_writing_one_task_share_its_seq(tmp_path: Path) -> None:
    Store(tmp_path / "hal.db").close()
    count = 800
    procs = start_writers(tmp_path, [("one", "t1"), ("one", "t1"), ("one", "t1")], count)
    assert all(p.wait() == 0 for p in procs)
    events = read_events(tmp_path / "one.jsonl")
    assert [e.seq for e in events] == list(range(1, 3 * count + 1))
    assert [e.gseq for e in events] == sorted({e.gseq for e in events})
    with Store(tmp_path / "hal.db") as store:
        assert store.event_count("t1") == 3 * count


def test_gseq_survives_a_restart(tmp_path: Path) -> None:
    with (
        Store(tmp_path / "hal.db") as store,
        EventLog(tmp_path / "a.jsonl", "a", store=store) as log,
    ):
        first = [log.emit(Output(text="x")).gseq for _ in range(3)]
    with Store(tmp_path / "hal.db") as store:
        assert store.last_gseq() == 3
        with EventLog(tmp_path / "b.jsonl", "b", store=store) as log:
            later = log.emit(Phase(phase="running")).gseq
    assert first == [1, 2, 3] and later == 4
    line = json.loads((tmp_path / "b.jsonl").read_text())
    assert line["gseq"] == 4 and line["seq"] == 1


def test_batched_events_get_gseq_when_written(tmp_path: Path) -> None:
    with Store(tmp_path / "hal.db") as store:
        log = EventLog(tmp_path / "e.jsonl", "t", store=store, index_batch=64, max_delay=0.05)
        got = [log.emit(Output(text=str(n))) for n in range(5)]
        assert [e.seq for e in got] == [1, 2, 3, 4, 5]
        deadline = time.monotonic() + 5
        while store.event_count("t") < 5 and time.monotonic() < deadline:
            time.sleep(0.01)  # the flusher writes the batch after max_delay
        assert [e.gseq for e in got] == [1, 2, 3, 4, 5]
        assert [e.gseq for e in read_events(tmp_path / "e.jsonl")] == [1, 2, 3, 4, 5]
        log.close()


def test_index_rows_without_lines_are_dropped_on_open(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with Store(tmp_path / "hal.db") as store:
        with EventLog(path, "t", store=store) as log:
            log.emit(Output(text="a"))
        # A writer killed between its index commit and its file write.
        store.record_events("t", [(2, "output", 1.0), (3, "output", 1.0)])
        with EventLog(path, "t", store=store) as log:
            assert store.event_count("t") == 1
            again = log.emit(Output(text="b"))
        assert (again.seq, again.gseq) == (2, 4)  # numbers are never handed out twice


def test_a_background_writer_never_waits_for_the_database(tmp_path: Path) -> None:
    import sqlite3

    # A wait for the lock would last an hour: emits that return within the (generous) bound
    # below, while the lock is held, did not wait for the database.
    with Store(tmp_path / "hal.db", busy_timeout_s=3600.0) as store:
        log = EventLog(tmp_path / "e.jsonl", "t", store=store, background=True)
        other = sqlite3.connect(tmp_path / "hal.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        emitted: list[Event] = []

        def emit() -> None:
            emitted.append(log.emit(Phase(phase="running")))
            for n in range(100):
                emitted.append(log.emit(Output(text=str(n))))

        emitter = threading.Thread(target=emit, daemon=True)
        emitter.start()
        emitter.join(120)
        try:
            assert not emitter.is_alive(), "emit waited for the database"
            assert len(emitted) == 101
            time.sleep(0.3)
            assert store.event_count("t") == 0  # waiting for the lock, on the flusher thread
        finally:
            other.execute("ROLLBACK")
            other.close()
        log.close()
        assert emitted[0].gseq == 1 and store.event_count("t") == 101
    assert [e.seq for e in read_events(tmp_path / "e.jsonl")] == list(range(1, 102))
