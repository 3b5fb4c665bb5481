"""The JSONL event log: stamping, masking, crash recovery, indexing and sinks."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from hal9999.errors import DiskFull
from hal9999.events.log import EventLog, recover
from hal9999.events.models import AgentText, Event, Message, Output, Phase, TaskEnd, ToolCall
from hal9999.events.reader import read_events
from hal9999.redact import REDACTED, SecretMasker
from hal9999.store import Store

SECRET = "sk-live-0123456789abcdef"


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_emit_stamps_and_appends_one_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    original = AgentText(text="hello")
    with EventLog(path, "t1") as log:
        first = log.emit(original)
        second = log.emit(Phase(phase="running", previous="preparing"))
    assert (first.seq, second.seq) == (1, 2)
    assert first.task_id == "t1" and first.ts > 0
    assert original.seq == 0 and original.task_id == ""  # the caller's object is untouched
    assert lines(path) == [
        json.loads(first.model_dump_json()),
        json.loads(second.model_dump_json()),
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_seq_continues_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, "t1") as log:
        for _ in range(3):
            log.emit(Output(text="x"))
    with EventLog(path, "t1") as log:
        assert log.last_seq == 3
        assert log.emit(Output(text="y")).seq == 4
    assert [e.seq for e in read_events(path)] == [1, 2, 3, 4]


def test_crash_truncated_last_line_is_cut_away(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, "t1") as log:
        log.emit(Phase(phase="running"))
        log.emit(Output(text="before the crash"))
    intact = path.read_bytes()
    with path.open("ab") as file:
        file.write(b'{"type": "output", "seq": 3, "te')
    with EventLog(path, "t1") as log:
        assert path.read_bytes() == intact
        assert log.emit(Message(text="resumed")).seq == 3
    events = read_events(path)
    assert [(e.seq, e.type) for e in events] == [(1, "phase"), (2, "output"), (3, "message")]


def test_recovery_skips_a_garbled_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, "t1") as log:
        log.emit(Output(text="a"))
        log.emit(Output(text="b"))
    with path.open("ab") as file:
        file.write(b"not json at all\n")
    assert recover(path) == 2


def test_recovery_reads_lines_longer_than_a_block(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    big = "z" * 200_000
    with EventLog(path, "t1") as log:
        log.emit(Output(text="small"))
        log.emit(Output(text=big))
    with path.open("ab") as file:
        file.write(b'{"type": "output", "text": "' + b"y" * 150_000)
    assert recover(path) == 2
    assert path.read_bytes().endswith(b"\n")
    assert [len(getattr(e, "text", "")) for e in read_events(path)] == [5, 200_000]


def test_recover_of_missing_or_empty_file(tmp_path: Path) -> None:
    assert recover(tmp_path / "missing.jsonl") == 0
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert recover(tmp_path / "empty.jsonl") == 0
    (tmp_path / "partial.jsonl").write_bytes(b'{"type":')
    assert recover(tmp_path / "partial.jsonl") == 0
    assert (tmp_path / "partial.jsonl").read_bytes() == b""


def test_masker_keeps_secrets_out_of_file_and_store(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    masker = SecretMasker([SECRET])
    with (
        Store(tmp_path / "hal.db") as store,
        EventLog(path, "t1", store=store, masker=masker) as log,
    ):
        text = log.emit(AgentText(text=f"my key is {SECRET}"))
        call = log.emit(ToolCall(name="bash", input={"cmd": ["echo", SECRET], "n": 1}))
        assert text.text == f"my key is {REDACTED}"  # type: ignore[union-attr]
        assert call.input == {"cmd": ["echo", REDACTED], "n": 1}  # type: ignore[union-attr]
        assert store.event_count("t1") == 2
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert SECRET.encode() not in on_disk
    assert REDACTED.encode() in path.read_bytes()


def test_events_are_indexed_in_the_store(tmp_path: Path) -> None:
    with Store(tmp_path / "hal.db") as store:
        with EventLog(tmp_path / "events.jsonl", "t1", store=store) as log:
            log.emit(Phase(phase="running"))
            log.emit(Output(text="a"))
            log.emit(Output(text="b"))
        assert store.event_count("t1") == 3
        assert store.event_count("t1", "output") == 2
        assert store.last_seq("t1") == 3


def test_index_catches_up_with_the_file_on_open(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, "t1") as log:  # written without a store, as after a crash
        log.emit(Phase(phase="running"))
        log.emit(Output(text="a"))
    with Store(tmp_path / "hal.db") as store:
        store.index_events("t1", [(1, "phase", 1.0)])
        with EventLog(path, "t1", store=store):
            assert store.last_seq("t1") == 2
            assert store.event_count("t1", "output") == 1


def test_failing_store_does_not_break_emit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "hal.db")
    store.close()
    with EventLog(tmp_path / "events.jsonl", "t1", store=store) as log:
        assert log.emit(Output(text="still recorded")).seq == 1
    assert "could not index event #1" in caplog.text


def test_a_full_disk_under_the_index_is_one_line_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI's test_disk saw hal print a traceback for a full disk while indexing an event.
    with Store(tmp_path / "hal.db") as store:

        def full(*args: object) -> None:
            raise DiskFull("cannot write to the database: the disk holding it is full")

        monkeypatch.setattr(store, "record_events", full)
        monkeypatch.setattr(store, "forget_events_after", full)
        with EventLog(tmp_path / "events.jsonl", "t1", store=store) as log:
            assert log.emit(Output(text="still recorded")).seq == 1
            log._forget(0)
    said = [r for r in caplog.records if r.name == "hal9999.events.log"]
    assert [r.getMessage().split(": ", 1)[1] for r in said] == [
        "could not index event #1: cannot write to the database: the disk holding it is full",
        "could not drop index rows past #0: cannot write to the database: the disk holding "
        "it is full",
    ]
    assert all(r.exc_info is None for r in said)
    assert len(read_events(tmp_path / "events.jsonl")) == 1


def test_failing_sink_is_logged_and_others_still_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("sink down")

    with EventLog(tmp_path / "events.jsonl", "t1") as log:
        log.add_sink(broken)
        log.add_sink(received.append)
        first = log.emit(Output(text="a"))
        log.remove_sink(broken)
        log.remove_sink(broken)
        second = log.emit(Output(text="b"))
    assert received == [first, second]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "failed on output #1" in failures[0].getMessage()
    assert len(read_events(tmp_path / "events.jsonl")) == 2


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors ``os.fsync`` is called on from here on."""
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return calls


def test_fsync_on_phase_and_task_end_only(tmp_path: Path, fsyncs: list[int]) -> None:
    calls = fsyncs
    log = EventLog(tmp_path / "events.jsonl", "t1")
    log.emit(Output(text="a"))
    log.emit(AgentText(text="b"))
    assert calls == []
    log.emit(Phase(phase="running"))
    assert len(calls) == 1
    log.emit(TaskEnd(status="succeeded"))
    assert len(calls) == 2
    log.close()
    assert len(calls) == 2  # everything was on disk already: no fsync of the close's own


def test_events_emitted_together_are_one_batch_with_one_fsync(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    # A run's final phase and task_end in one batch, not one each (two
    # index transactions, two appends, two fsyncs).
    with Store(tmp_path / "hal.db") as store:
        log = EventLog(tmp_path / "events.jsonl", "t1", store=store)
        with log.together():
            log.emit(Phase(phase="succeeded", previous="collecting"))
            log.emit(TaskEnd(status="succeeded"))
            assert fsyncs == [] and not (tmp_path / "events.jsonl").read_bytes()
        assert len(fsyncs) == 1
        assert [e.type for e in read_events(tmp_path / "events.jsonl")] == ["phase", "task_end"]
        assert store.index_extent("t1") == (2, 2)
        log.close()
    assert len(fsyncs) == 1


def test_events_emitted_together_are_written_when_the_block_raises(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", "t1")
    with pytest.raises(RuntimeError), log.together():
        log.emit(Phase(phase="failed"))
        raise RuntimeError("after the phase")
    assert [e.seq for e in read_events(tmp_path / "events.jsonl")] == [1]  # before the close
    log.close()


def test_close_fsyncs_what_was_written_since_the_last_fsync(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    calls = fsyncs
    log = EventLog(tmp_path / "events.jsonl", "t1")
    log.emit(Phase(phase="running"))
    log.emit(Output(text="after the phase"))
    assert len(calls) == 1
    log.close()
    assert len(calls) == 2
    quiet = EventLog(tmp_path / "other.jsonl", "t2")
    quiet.close()  # nothing written by it: fsync'ed all the same, as before
    assert len(calls) == 3


def test_a_background_writer_closes_without_waiting_for_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemon's task creation closes its writer after `task_created`: the API's answer
    # and the task's start no longer wait for that fsync, which the flusher thread does.
    synced: list[str] = []
    done = threading.Event()
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(threading.current_thread().name)
        done.set()

    monkeypatch.setattr(os, "fsync", counting_fsync)
    path = tmp_path / "events.jsonl"
    log = EventLog(path, "t1", background=True)
    log.emit(Output(text="not a phase: no fsync of its own"))
    log.close()
    assert [e.seq for e in read_events(path)] == [1]  # written before close returned
    assert done.wait(30)
    assert synced == ["hal-event-flusher"]  # and forced to disk, once, on the flusher


def test_concurrent_emits_get_unique_ordered_seqs(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, "t1") as log:

        def worker(n: int) -> None:
            for i in range(100):
                log.emit(Output(text=f"{n}:{i}"))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    events = read_events(path)
    assert [e.seq for e in events] == list(range(1, 801))
    assert len({getattr(e, "text", "") for e in events}) == 800


def test_emit_after_close_fails(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", "t1")
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.emit(Output(text="late"))


def test_stamping_copies_like_model_copy_and_leaves_the_callers_event_alone(
    tmp_path: Path,
) -> None:
    # The log stamps events without pydantic's generic copy (a third of an event's
    # cost); the stamped event must be what model_copy made, and the caller's untouched.
    from hal9999.events.log import _stamped

    for event in (Output(text="a\n"), Phase(phase="running", detail="d")):
        stamps = {"seq": 7, "ts": 1.5, "task_id": "t1"}
        fast, slow = _stamped(event, 7, 1.5, "t1"), event.model_copy(update=stamps)
        assert fast.model_dump_json() == slow.model_dump_json()
        assert fast.model_fields_set == slow.model_fields_set
        assert type(fast) is type(slow) and fast == slow
        fast.gseq = 3
        assert event.seq == 0 and event.gseq == 0 and event.task_id != "t1"


def test_each_line_is_the_models_own_json_with_its_global_number(tmp_path: Path) -> None:
    # The log writes lines with the serializer directly and sets gseq without pydantic's
    # assignment handler; both must give what the model's own methods give.
    events: list[Event] = [
        Output(text="é\n"),
        Phase(phase="running"),
        ToolCall(name="edit", input={"path": "a", "n": [1, 2.5, None]}),
        TaskEnd(status="succeeded", exit_code=0),
    ]
    with Store(tmp_path / "hal.db") as store:
        with EventLog(tmp_path / "e.jsonl", "t1", store=store, index_batch=3) as log:
            stamped = [log.emit(event) for event in events]
        lines = (tmp_path / "e.jsonl").read_bytes().splitlines()
    assert [e.gseq for e in stamped] == [1, 2, 3, 4]
    for event, line in zip(stamped, lines, strict=True):
        assert line == event.model_dump_json().encode()
        assert "gseq" in event.model_fields_set
        assert json.loads(line)["gseq"] == event.gseq
    assert all(e.gseq == 0 and "gseq" not in e.model_fields_set for e in events)
