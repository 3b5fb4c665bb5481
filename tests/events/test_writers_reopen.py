"""A task's log closed and opened again in one process (a daemon's new task: its creation,
then its run) is not read back when the file is as it was left; any change to
it since, by anyone, and it is, as before. Counted, not timed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.events import log as event_log
from hal9999.events.log import EventLog
from hal9999.events.models import Message, Phase, TaskCreated
from hal9999.events.writers import EventWriters
from hal9999.store import Store


@pytest.fixture
def recovers(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every read back of a log's last seq (``recover``), by path."""
    calls: list[Path] = []
    original = event_log.recover

    def counted(path: Path) -> int:
        calls.append(path)
        return original(path)

    monkeypatch.setattr(event_log, "recover", counted)
    return calls


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh home's store, closed after the test."""
    opened = Store.open(tmp_path / "home")
    yield opened
    opened.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the task's log is written."""
    return tmp_path / "s" / "events.jsonl"


def created() -> TaskCreated:
    return TaskCreated(prompt_chars=1, agent="a", provider="bwrap", repo="/r", ref=None)


def seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def test_a_log_opened_again_as_it_was_left_is_not_read_back(
    store: Store, path: Path, recovers: list[Path]
) -> None:
    writers = EventWriters(store)
    with writers.open("t1", path) as log:
        log.emit(created())
    assert recovers == []  # a new, empty file: nothing to read back
    with writers.open("t1", path) as log:
        assert log.last_seq == 1
        log.emit(Phase(phase="provisioning", previous="queued"))
        log.emit(Message(level="info", text="x"))
    assert recovers == []  # without the change, read back at each open
    assert seqs(path) == [1, 2, 3]
    assert store.index_extent("t1") == (3, 3)
    with writers.open("t1", path) as log:
        log.emit(Phase(phase="preparing", previous="provisioning"))
    assert recovers == []
    assert seqs(path) == [1, 2, 3, 4]


def test_a_log_changed_since_it_was_left_is_read_back(
    store: Store, path: Path, recovers: list[Path]
) -> None:
    writers = EventWriters(store)
    with writers.open("t1", path) as log:
        log.emit(created())
    # Another process's writer appends meanwhile (its own open reads the file back).
    with EventLog(path, "t1", store=store) as other:
        other.emit(Message(level="info", text="from elsewhere"))
    assert len(recovers) == 1
    with writers.open("t1", path) as log:
        assert log.last_seq == 2  # read back: the file grew
        log.emit(Phase(phase="provisioning", previous="queued"))
    assert len(recovers) == 2
    assert seqs(path) == [1, 2, 3]
    # An incomplete last line (a writer killed mid-write) is cut away, as before.
    with path.open("ab") as file:
        file.write(b'{"seq": 4, "ty')
    with writers.open("t1", path) as log:
        assert log.last_seq == 3
        log.emit(Message(level="info", text="after the cut"))
    assert len(recovers) == 3
    assert seqs(path) == [1, 2, 3, 4]
    # The file replaced by another of the same size: another inode, read back.
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    with writers.open("t1", path) as log:
        assert log.last_seq == 4
    assert len(recovers) == 4


def test_a_log_left_with_another_writers_lines_past_its_own_is_not_trusted(
    store: Store, path: Path, recovers: list[Path]
) -> None:
    # Between our last batch (the file lock released) and our close, another process
    # appends: what our writer knows ends before the file does, so the state is not kept.
    writers = EventWriters(store)
    with writers.open("t1", path) as log:
        log.emit(created())
        log.flush()
        with EventLog(path, "t1", store=store) as other:
            other.emit(Message(level="info", text="between"))
    assert len(recovers) == 1
    with writers.open("t1", path) as log:
        assert log.last_seq == 2
    assert len(recovers) == 2
