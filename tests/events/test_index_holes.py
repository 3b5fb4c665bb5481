"""The event index comes to hold every event of a task's file: a batch that failed to index
(its lines written with ``gseq`` 0) is indexed by the next writer even when a later batch of
the same task indexed (the catch-up must not compare only the last ``seq``), and
the common case, no hole, costs an open one query and no read of the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hal9999.events import log as log_module
from hal9999.events.bus import EventBus, IndexTail
from hal9999.events.log import EventLog
from hal9999.events.models import Output
from hal9999.events.reader import by_gseq
from hal9999.store import Store


def indexed(store: Store, task_id: str) -> list[tuple[int, int]]:
    return [(row.seq, row.gseq) for row in store.events_after(0, task_id=task_id, limit=100)]


def write_with_a_hole(path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events 1-2 written but not indexed (the store refused them), 3-4 indexed."""
    real = store.record_events_of

    def refuse(batches: list[tuple[str, list[tuple[int, str, float]]]]) -> list[list[int]]:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    with EventLog(path, "t", store=store) as log:
        monkeypatch.setattr(store, "record_events_of", refuse)
        log.emit(Output(text="a"))
        log.emit(Output(text="b"))
        monkeypatch.setattr(store, "record_events_of", real)
        log.emit(Output(text="c"))
        log.emit(Output(text="d"))
    assert [json.loads(line)["gseq"] for line in path.read_text().splitlines()] == [0, 0, 1, 2]
    assert indexed(store, "t") == [(3, 1), (4, 2)]


def test_a_hole_before_an_indexed_batch_is_filled_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    with Store(tmp_path / "hal.db") as store:
        write_with_a_hole(path, store, monkeypatch)
        EventLog(path, "t", store=store).close()
        rows = indexed(store, "t")
        # Every event of the file, once; the late ones get the next global numbers (a
        # consumer resuming after 2 gets them; none is numbered below one it has seen).
        assert sorted(seq for seq, _ in rows) == [1, 2, 3, 4]
        assert rows == [(3, 1), (4, 2), (1, 3), (2, 4)]
        assert store.last_gseq() == 4
        # Filled once: the next open finds nothing missing and hands out no number.
        with EventLog(path, "t", store=store) as log:
            again = log.emit(Output(text="e"))
        assert (again.seq, again.gseq) == (5, 5)
        assert store.event_count("t") == 5


def test_holes_and_a_tail_are_filled_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    with Store(tmp_path / "hal.db") as store:
        write_with_a_hole(path, store, monkeypatch)
        with EventLog(path, "t", store=None) as log:  # a writer without the store
            log.emit(Output(text="e"))
        EventLog(path, "t", store=store).close()
        assert [seq for seq, _ in indexed(store, "t")] == [3, 4, 1, 2, 5]


def test_an_open_without_a_hole_reads_nothing_of_the_file_for_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    with Store(tmp_path / "hal.db") as store:
        with EventLog(path, "t", store=store) as log:
            for n in range(50):
                log.emit(Output(text=str(n)))

        def no_scan(*args: object, **kwargs: object) -> object:
            raise AssertionError("the whole file was read for the index")

        monkeypatch.setattr(log_module, "read_events", no_scan)
        statements: list[str] = []
        store._db().set_trace_callback(statements.append)
        EventLog(path, "t", store=store).close()
        store._db().set_trace_callback(None)
        assert len(statements) == 1  # the task's count and last seq, in one query
        assert store.event_count("t") == 50


async def test_the_bus_publishes_late_indexed_events_with_their_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    with Store(tmp_path / "hal.db") as store:
        write_with_a_hole(path, store, monkeypatch)
        bus = EventBus()
        sub = bus.subscribe()
        tail = IndexTail(store, bus, lambda task: path, poll=0.01, patience=0.0)
        tail.cursor = 2  # a follower that has seen the batch that indexed
        EventLog(path, "t", store=store).close()
        # Their lines say gseq 0; the index numbered them 3 and 4 (without the match by seq
        # they were skipped as lost).
        assert await tail.step() == 2
        got = [sub.queue.get_nowait() for _ in range(2)]
        assert [(e.seq, e.gseq, e.text) for e in got if isinstance(e, Output)] == [
            (1, 3, "a"),
            (2, 4, "b"),
        ]


def test_a_numbered_line_is_never_taken_for_another_row_of_its_seq() -> None:
    lines = [Output(text="x", seq=5, gseq=9), Output(text="y", seq=6)]
    found = by_gseq(lines, {5: 7, 6: 8})  # 7: a row of seq 5 a killed writer left
    assert sorted(found) == [8, 9] and found[8].text == "y" and found[8].gseq == 8


def test_the_events_api_pages_late_indexed_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from hal9999.server.follow import _bodies

    path = tmp_path / "events.jsonl"
    with Store(tmp_path / "hal.db") as store:
        write_with_a_hole(path, store, monkeypatch)
        EventLog(path, "t", store=store).close()
        task = SimpleNamespace(session_dir=str(tmp_path))
        monkeypatch.setattr(store, "get_task", lambda task_id: task)
        page = _bodies(store, store.events_after(0, limit=100))
        assert [(e.seq, e.gseq) for e in page] == [(3, 1), (4, 2), (1, 3), (2, 4)]
