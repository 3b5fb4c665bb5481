"""The flusher indexes the batches of every task due at once in one store transaction
(one a batch would be several transactions a task in a daemon), keeping the global order as
consumers see it, the file as the record across a kill, and one task's failure its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hal9999.events import flusher
from hal9999.events.flusher import flush_together
from hal9999.events.log import EventLog
from hal9999.events.models import Event, Output, Phase
from hal9999.store import Store

TASKS = 8


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "hal.db") as store:
        yield store


def open_logs(tmp_path: Path, store: Store, sink: list[Event]) -> list[EventLog]:
    """Background writers as a daemon's, whose batches wait (a long delay) for the test."""
    logs = []
    for n in range(TASKS):
        log = EventLog(
            tmp_path / f"t{n}.jsonl", f"t{n}", store=store, index_batch=256,
            max_delay=600, background=True,
        )  # fmt: skip
        log.add_sink(sink.append)
        logs.append(log)
    return logs


def emit_some(logs: list[EventLog]) -> None:
    for log in logs:
        for n in range(3):
            log.emit(Output(text=f"{log.task_id} {n}"))


def transactions(store: Store) -> list[str]:
    begun: list[str] = []
    store._db().set_trace_callback(
        lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None
    )
    return begun


def test_the_batches_of_all_due_tasks_take_one_transaction(tmp_path: Path, store: Store) -> None:
    seen: list[Event] = []
    logs = open_logs(tmp_path, store, seen)
    emit_some(logs)
    begun = transactions(store)
    flush_together(logs)
    store._db().set_trace_callback(None)
    assert len(begun) == 1  # one a task (8) before
    # Global order: the tasks' batches follow each other, each task's rows in seq order,
    # and the sinks (the bus) get them in that order, as the index hands them out.
    gseqs = [e.gseq for e in seen]
    assert gseqs == sorted(gseqs) and len(set(gseqs)) == len(gseqs) == TASKS * 3
    assert [(e.task_id, e.seq) for e in seen] == [
        (f"t{t}", s) for t in range(TASKS) for s in (1, 2, 3)
    ]
    for n, log in enumerate(logs):
        written = lines(log.path)
        indexed = store.events_after(0, task_id=f"t{n}")
        assert [(row["seq"], row["gseq"]) for row in written] == [
            (row.seq, row.gseq) for row in indexed
        ]
        log.close()


def test_a_phase_event_is_written_at_once_with_the_other_tasks_due(
    tmp_path: Path, store: Store
) -> None:
    """A phase change is flushed by the flusher thread without waiting for its delay; a
    consumer that sees it finds every earlier event of its task indexed."""
    seen: list[Event] = []
    logs = open_logs(tmp_path, store, seen)
    emit_some(logs)
    logs[3].emit(Phase(phase="running"))
    for log in logs:
        log.close()  # the rest on close
    phase = next(e for e in seen if e.type == "phase")
    earlier = store.events_after(0, task_id="t3")
    assert [row.seq for row in earlier] == [1, 2, 3, 4]
    assert all(row.gseq <= phase.gseq for row in earlier)


def test_one_task_failing_to_index_costs_the_others_nothing(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Event] = []
    logs = open_logs(tmp_path, store, seen)
    emit_some(logs)
    real = store.record_events_of

    def refuse_t5(batches: list[tuple[str, list[tuple[int, str, float]]]]) -> list[list[int]]:
        if any(task_id == "t5" for task_id, _ in batches):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real(batches)

    monkeypatch.setattr(store, "record_events_of", refuse_t5)
    flush_together(logs)
    for n, log in enumerate(logs):
        assert [row["seq"] for row in lines(log.path)] == [1, 2, 3]
        assert store.event_count(f"t{n}") == (0 if n == 5 else 3)
    assert [row["gseq"] for row in lines(logs[5].path)] == [0, 0, 0]
    monkeypatch.undo()
    # The next writer of t5 indexes the lines written without their rows, and the flusher
    # is not wedged: the next batches are written.
    EventLog(logs[5].path, "t5", store=store).close()
    emit_some(logs)
    flush_together(logs)
    for log in logs:
        log.close()
    for n in range(TASKS):
        assert store.event_count(f"t{n}") == 6
    assert len({row.gseq for row in store.events_after(0, limit=100)}) == TASKS * 6


def test_one_task_failing_to_write_costs_the_others_nothing(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under one task's file: its batch is dropped from file and index alike
    (no row without its line), every other task's is written and delivered."""
    seen: list[Event] = []
    logs = open_logs(tmp_path, store, seen)
    emit_some(logs)
    full = logs[2]

    def no_space(batch: list[Event]) -> None:
        full._forget(batch[0].seq - 1)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(full, "_write", no_space)
    flush_together(logs)
    monkeypatch.undo()
    assert store.event_count("t2") == 0 and not full.path.read_text()
    for n, log in enumerate(logs):
        if n != 2:
            assert store.event_count(f"t{n}") == 3 and len(lines(log.path)) == 3
    assert len(seen) == (TASKS - 1) * 3
    for log in logs:
        log.close()


KILLED = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from hal9999.events import flusher
    from hal9999.events.log import EventLog
    from hal9999.events.models import Output
    from hal9999.store import Store
    home, appended = Path(sys.argv[1]), int(sys.argv[2])
    store = Store(home / "hal.db")
    logs = [EventLog(home / f"t{n}.jsonl", f"t{n}", store=store, index_batch=256,
                     max_delay=600, background=True) for n in range(4)]
    for log in logs:
        log.emit(Output(text="kept"))  # written and indexed alone first
        log.flush()
        for n in range(3):
            log.emit(Output(text=f"{log.task_id} {n}"))
    finish = EventLog._finish
    done = []

    def killed(self, batch):
        if len(done) == appended:
            os._exit(9)  # as kill -9: the index committed, these lines not appended
        done.append(finish(self, batch))

    EventLog._finish = killed
    flusher.flush_together(logs)
    """
)


@pytest.mark.parametrize("appended", [0, 2])
def test_a_kill_between_the_index_and_the_files_loses_and_duplicates_nothing(
    tmp_path: Path, appended: int
) -> None:
    """Killed after the shared transaction, with ``appended`` of the 4 tasks' lines
    written: each task's next writer keeps the rows of the lines in its file and drops the
    others, so index and file agree again (no event lost, none twice, no gseq reused)."""
    run = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path), str(appended)])
    assert run.returncode == 9
    with Store(tmp_path / "hal.db") as store:
        assert len(store.events_after(0, limit=100)) == 4 * 4  # all rows committed
        for n in range(4):
            with EventLog(tmp_path / f"t{n}.jsonl", f"t{n}", store=store) as log:
                log.emit(Output(text="after"))
        for n in range(4):
            written = lines(tmp_path / f"t{n}.jsonl")
            kept = 4 if n < appended else 1
            assert [row["seq"] for row in written] == list(range(1, kept + 2))
            indexed = store.events_after(0, task_id=f"t{n}")
            assert [(row["seq"], row["gseq"]) for row in written] == [
                (row.seq, row.gseq) for row in indexed
            ]
        gseqs = [row.gseq for row in store.events_after(0, limit=100)]
        assert len(gseqs) == len(set(gseqs))
        assert max(gseqs) == store.last_gseq() > 4 * 4  # after the kill: new numbers


def test_the_flusher_thread_writes_the_batches_due_soon_with_a_due_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []
    written = threading.Event()

    def record(logs: list[Any]) -> None:
        calls.append(sorted(logs))
        if sum(map(len, calls)) == 3:
            written.set()

    monkeypatch.setattr(flusher, "flush_together", record)
    thread = flusher._Flusher()
    start = time.monotonic()
    thread.schedule("a", start + 0.2)  # type: ignore[arg-type]
    thread.schedule("b", start + 0.2 + thread.coalesce / 2)  # type: ignore[arg-type]
    thread.schedule("c", start + 0.6)  # type: ignore[arg-type]
    assert written.wait(10)
    assert calls == [["a", "b"], ["c"]]
