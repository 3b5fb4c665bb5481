"""The append-only JSONL event log of one task, and its fan-out to the store and sinks.

One line per event, flushed at once and fsync'ed at phase changes and the end, so a crash
loses at most the output since the last phase. The file is the source of truth; the store's
event index and the sinks (SSE, dashboards) are derived from it and may fail without
breaking a task. One process writes a task's log at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from hal9999.events.models import EVENT_ADAPTER, Event
from hal9999.events.reader import parse_line, read_events
from hal9999.redact import SecretMasker
from hal9999.store import Store

logger = logging.getLogger(__name__)

Sink = Callable[[Event], None]
"""Receives each recorded event, in seq order, on the emitting thread; must be quick."""

FSYNC_TYPES = frozenset({"phase", "task_end"})
"""Event types after which the file is forced to disk."""

_STAMPS = ("type", "seq", "ts", "task_id")
_BLOCK = 1 << 16


def _lines_backwards(file: BinaryIO, end: int) -> Iterator[bytes]:
    """The lines of ``file[:end]``, last first, reading blocks from the end."""
    pos = end
    head = b""
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        file.seek(pos)
        lines = (file.read(step) + head).split(b"\n")
        # lines[0] may be the end of a line that starts in an earlier block: keep it.
        head = lines[0]
        yield from reversed(lines[1:])
    yield head


def _complete_end(file: BinaryIO, size: int) -> int:
    """The offset just past the last newline of the file (0 when it has none)."""
    pos = size
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        file.seek(pos)
        found = file.read(step).rfind(b"\n")
        if found != -1:
            return pos + found + 1
    return 0


def recover(path: Path) -> int:
    """Cut away an incomplete last line left by a crash; return the last event's seq."""
    try:
        file = path.open("r+b")
    except FileNotFoundError:
        return 0
    with file:
        size = file.seek(0, os.SEEK_END)
        end = _complete_end(file, size)
        if end < size:
            logger.warning("%s: removing %d bytes of an unfinished last event", path, size - end)
            file.truncate(end)
        for line in _lines_backwards(file, end):
            event = parse_line(line, path)
            if event is not None:
                return event.seq
    return 0


class EventLog:
    """Records a task's events: stamps, masks, appends, indexes and fans out."""

    def __init__(
        self,
        path: Path,
        task_id: str,
        *,
        store: Store | None = None,
        masker: SecretMasker | None = None,
        index_batch: int = 1,
    ) -> None:
        self.path = path
        self.task_id = task_id
        self.store = store
        self.masker = masker
        self.index_batch = max(1, index_batch)
        """Index rows written per store transaction; rows wait at most until the next phase
        or end event, or close. The file stays the source of truth: a crash leaves the
        index behind it, and the next open catches up."""
        self._pending: list[tuple[int, str, float]] = []
        # Re-entrant so a sink that emits (a warning about itself, say) cannot deadlock.
        self._lock = threading.RLock()
        self._sinks: list[Sink] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = recover(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size
        self._catch_up_index()

    @property
    def last_seq(self) -> int:
        """The seq of the last event recorded (0 for an empty log)."""
        return self._seq

    def _catch_up_index(self) -> None:
        # A crash between the append and the index leaves the index behind the file.
        if self.store is None or self._seq == 0:
            return
        try:
            indexed = self.store.last_seq(self.task_id)
            if indexed < self._seq:
                missing = read_events(self.path, after_seq=indexed)
                self.store.index_events(self.task_id, ((e.seq, e.type, e.ts) for e in missing))
        except Exception:
            logger.exception("%s: could not bring the event index up to date", self.path)

    def add_sink(self, sink: Sink) -> None:
        """Also hand every recorded event to ``sink``; its failures are logged, not raised."""
        with self._lock:
            self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        """Stop handing events to ``sink`` (no error when it was not added)."""
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    def emit(self, event: Event) -> Event:
        """Record an event; returns the stamped, masked copy that was written."""
        with self._lock:
            if self._file is None:
                raise ValueError(f"the event log {self.path} is closed")
            seq = self._seq + 1
            stamps = {"seq": seq, "ts": time.time(), "task_id": self.task_id}
            if self.masker:
                data = event.model_dump(mode="json")
                payload = self.masker.mask_obj({k: v for k, v in data.items() if k not in _STAMPS})
                stamped = EVENT_ADAPTER.validate_python({**payload, **stamps, "type": data["type"]})
            else:
                # Nothing to mask: the event is already valid, only the stamps change.
                stamped = event.model_copy(update=stamps)
            line = stamped.model_dump_json().encode() + b"\n"
            try:
                self._file.write(line)
                self._file.flush()
                if stamped.type in FSYNC_TYPES:
                    os.fsync(self._file.fileno())
            except OSError:
                # Leave no half line behind for the next event to be glued onto.
                self._truncate_to(self._size)
                raise
            self._size += len(line)
            self._seq = seq
            self._index(stamped)
            for sink in list(self._sinks):
                try:
                    sink(stamped)
                except Exception:
                    logger.exception("event sink %r failed on %s #%d", sink, stamped.type, seq)
            return stamped

    def _truncate_to(self, size: int) -> None:
        if self._file is None:
            return
        try:
            os.ftruncate(self._file.fileno(), size)
        except OSError:
            logger.exception("%s: could not remove a partly written event", self.path)

    def _index(self, event: Event) -> None:
        if self.store is None:
            return
        self._pending.append((event.seq, event.type, event.ts))
        if len(self._pending) >= self.index_batch or event.type in FSYNC_TYPES:
            self._flush_index()

    def _flush_index(self) -> None:
        if self.store is None or not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            self.store.index_events(self.task_id, rows)
        except Exception:
            logger.exception("%s: could not index event #%d", self.path, rows[0][0])

    def close(self) -> None:
        """Flush and close the file; further emits fail. Safe to call twice."""
        with self._lock:
            self._flush_index()
            if self._file is not None:
                try:
                    self._file.flush()
                    os.fsync(self._file.fileno())
                finally:
                    self._file.close()
                    self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
