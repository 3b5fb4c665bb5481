"""The append-only JSONL event log of one task, and its fan-out to the store and sinks.

Writing a batch (one event, or up to ``index_batch`` of them within ``max_delay``):

1. the first event of a batch takes an exclusive ``flock`` on the file, so writers in other
   processes (``hal task stop`` while ``hal run`` runs the task) wait their turn; if the file
   grew meanwhile the per-task ``seq`` is re-read from its last line;
2. each event gets the next per-task ``seq`` at once (``emit`` returns it);
3. the batch is indexed in the store in one transaction that also hands out its global
   ``gseq`` numbers (:mod:`hal9999.store.events`): commit order is ``gseq`` order; the
   flusher thread indexes the batches of every log due at once in one transaction, then
   appends each in that order (:mod:`hal9999.events.flusher`);
4. the lines, carrying both numbers, are appended and flushed (fsync'ed at phase changes and
   the end), the lock is released, and the sinks (the bus) get the events.

The file is the source of truth for event bodies; the index says which events exist and in
what global order. A ``kill -9`` can lose the events of the unwritten batch (at most
``max_delay`` worth: output is still in ``agent.log``, and an adopted run re-reads it from
the last recorded ``log_end``), and can leave index rows whose lines were never written:
the next writer drops them on open (their ``gseq`` stays unused). A failing store or sink is
logged and never breaks a task: the line is then written with ``gseq`` 0 and indexed by the
next writer that opens the log.
"""

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

from hal9999.errors import HalError
from hal9999.events.flusher import FLUSHER, _numbered
from hal9999.events.models import Event
from hal9999.events.reader import lines_backwards, parse_line, read_events
from hal9999.home import unusable_session_file
from hal9999.hostread import write_all
from hal9999.redact import SecretMasker
from hal9999.store import Store

logger = logging.getLogger(__name__)

Sink = Callable[[Event], None]
"""Receives each recorded event, in seq order, on the writing thread; must be quick."""

FSYNC_TYPES = frozenset({"phase", "task_end"})
"""Event types after which the file is forced to disk."""

_BLOCK = 1 << 16


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


_STAMPED = frozenset(("seq", "ts", "task_id"))
_new = object.__new__
_set = object.__setattr__


def _stamped(event: Event, seq: int, ts: float, task_id: str) -> Event:
    """``event.model_copy(update={"seq": seq, "ts": ts, "task_id": task_id})``, without
    pydantic's generic copy: a third of an event's cost in the log. Events have no extra
    fields and no private attributes (anything else takes ``model_copy``); like it, the
    stamps are not validated (hal makes them)."""
    if event.__pydantic_extra__ is not None or event.__pydantic_private__ is not None:
        return event.model_copy(update={"seq": seq, "ts": ts, "task_id": task_id})
    copy = _new(event.__class__)
    values = event.__dict__.copy()
    values["seq"] = seq
    values["ts"] = ts
    values["task_id"] = task_id
    _set(copy, "__dict__", values)
    _set(copy, "__pydantic_extra__", None)
    _set(copy, "__pydantic_fields_set__", event.__pydantic_fields_set__ | _STAMPED)
    _set(copy, "__pydantic_private__", None)
    return copy


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
        for line in lines_backwards(file, end):
            event = parse_line(line, path)
            if event is not None:
                return event.seq
    return 0


class Left(NamedTuple):
    """A closed log's file as its writer left it, and its last ``seq``: a writer that
    opens the same file in the same state (the same inode, size, and change and
    modification times: anyone's append, truncation or replacement changes one of them)
    knows its last ``seq`` without reading it back (:func:`recover`)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    seq: int

    @classmethod
    def of(cls, st: os.stat_result, seq: int) -> "Left":
        """The state ``st`` describes, with its last ``seq``."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, seq)

    def holds(self, st: os.stat_result) -> bool:
        """Whether ``st`` describes the file in this state."""
        return self[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _open_append(path: Path) -> int:
    """A descriptor appending to ``path``, made (with its directory) when missing: the
    directory is made only when the open finds none (asking first would be an ``mkdir`` and a
    ``stat`` at each open, three or more a task)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o600)


class EventLog:
    """Records a task's events: stamps, masks, indexes, appends and fans out."""

    def __init__(
        self,
        path: Path,
        task_id: str,
        *,
        store: Store | None = None,
        masker: SecretMasker | None = None,
        index_batch: int = 1,
        max_delay: float = 0.02,
        background: bool = False,
        left: Left | None = None,
    ) -> None:
        self.path = path
        self.task_id = task_id
        self.store = store
        self.maskers: list[SecretMasker] = [masker] if masker else []
        self.index_batch = max(1, index_batch)
        """Events written per store transaction and file write. A batch is written when it
        is full, at a ``phase`` or ``task_end`` event, after ``max_delay`` seconds, on
        :meth:`flush` and on close."""
        self.max_delay = max_delay
        self.background = background
        """Write every batch on the flusher thread, never on the emitting one (a daemon's
        event loop must not wait for the database); the fsync a :meth:`close` owes is the
        flusher's too (the closing thread returns once the lines are written)."""
        self._pending: list[Event] = []
        self._together = 0
        """Open :meth:`together` blocks: a ``phase`` or ``task_end`` waits for their end."""
        self._io_lock = threading.RLock()
        # Re-entrant so a sink that emits (a warning about itself, say) cannot deadlock.
        self._lock = threading.RLock()
        self._sinks: list[Sink] = []
        try:
            fd = _open_append(path)
        except OSError as exc:  # a directory in its place, say: one line, not a crash
            raise unusable_session_file(path, exc) from exc
        # Unbuffered: every batch is written whole at once (_write), and a buffered file's
        # open asks whether it is a terminal and where it stands.
        self._file: BinaryIO | None = os.fdopen(fd, "ab", buffering=0)
        self._locked = False
        self._seq = 0
        self._size = -1  # unknown: the first lock reads the file's last seq
        self._synced = False
        """Whether everything written through this writer is on disk (a batch ending with a
        ``phase`` or ``task_end`` was fsync'ed): then :meth:`close` needs no fsync of its own
        (a run's end, which a follower waits for, would do two in a row)."""
        self.left: Left | None = None
        """The file as :meth:`close` left it (set there): see :class:`Left`."""
        self._lock_file(left)
        try:
            self._catch_up_index()
        finally:
            self._unlock_file()

    @property
    def last_seq(self) -> int:
        """The seq of the last event recorded (0 for an empty log)."""
        return self._seq

    def add_masker(self, masker: SecretMasker) -> None:
        """Also mask the secrets of ``masker`` (a second user of a shared writer)."""
        with self._lock:
            if masker and all(m is not masker for m in self.maskers):
                self.maskers.append(masker)

    # -- the file lock -------------------------------------------------------------------

    def _lock_file(self, left: Left | None = None) -> None:
        """Take the cross-process lock and catch up with what other writers appended."""
        assert self._file is not None
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        self._locked = True
        st = os.fstat(self._file.fileno())
        size = st.st_size
        if left is not None and left.holds(st):
            # The file as this process's last writer of it left it: its last seq is known
            # (not re-read and parsed from the line its creation wrote).
            self._seq, self._size = left.seq, size
        elif size == 0:  # a new log (held locked: nobody writes it meanwhile)
            self._seq, self._size = 0, 0
        elif size != self._size:
            self._seq = recover(self.path)
            self._size = os.fstat(self._file.fileno()).st_size

    def _unlock_file(self) -> None:
        if self._locked and self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._locked = False

    def _catch_up_index(self) -> None:
        # Lines written without a store (or while it failed) are indexed now; rows indexed
        # by a writer killed before its file write are dropped. Runs under the file lock.
        if self.store is None:
            return
        # Lines written while the store failed can sit below an indexed batch (a hole, not
        # a tail): the index's count of the task's rows against its highest seq finds them
        # in the same one query, so an open without a hole reads no more of the file. Late
        # rows get the next global numbers, as any new event (consumers resume by gseq).
        try:
            top, count = self.store.index_extent(self.task_id)
            if top > self._seq:
                self.store.forget_events_after(self.task_id, self._seq)
                top, count = self.store.index_extent(self.task_id)
            if count == top == self._seq:
                return
            if count == top:  # no hole: only a tail
                missing = read_events(self.path, after_seq=top)
            else:
                have = self.store.indexed_seqs(self.task_id)
                missing = [e for e in read_events(self.path) if e.seq not in have]
            self.store.record_events(self.task_id, [(e.seq, e.type, e.ts) for e in missing])
        except HalError as exc:  # a full disk, say
            logger.error("%s: could not bring the event index up to date: %s", self.path,
                         exc.one_line())  # fmt: skip
        except Exception:
            logger.exception("%s: could not bring the event index up to date", self.path)

    # -- sinks ---------------------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        """Also hand every recorded event to ``sink``; its failures are logged, not raised."""
        with self._lock:
            self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        """Stop handing events to ``sink`` (no error when it was not added)."""
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    # -- writing -------------------------------------------------------------------------

    def emit(self, event: Event) -> Event:
        """Record an event; returns the stamped, masked copy (its ``gseq`` is set in place
        when its batch is written)."""
        with self._lock:
            if self._file is None:
                raise ValueError(f"the event log {self.path} is closed")
            if not self._locked:
                self._lock_file()
            seq = self._seq + 1
            # Masked field by field (numbers and hal's vocabulary untouched), then stamped.
            masked = event
            for masker in self.maskers:
                masked = masker.mask_model(masked)
            stamped = _stamped(masked, seq, time.time(), self.task_id)
            self._seq = seq
            self._pending.append(stamped)
            held = self._together > 0  # written when the together() block ends
            due = not held and (
                len(self._pending) >= self.index_batch or stamped.type in FSYNC_TYPES
            )
            if due and self.background:
                FLUSHER.schedule(self, 0.0)
            elif not due and not held and len(self._pending) == 1:
                FLUSHER.schedule(self, time.monotonic() + self.max_delay)
        if due and not self.background:
            self.flush()
        return stamped

    @contextmanager
    def together(self) -> Iterator[None]:
        """Write the events emitted inside as one batch when it ends: one index transaction,
        one append and one fsync for a run's final ``phase`` and ``task_end``, not one
        each (the end a run's caller waits for). Written as the last of
        them would have been: on this thread, or on the flusher's for a background writer;
        written all the same when the block raises."""
        with self._lock:
            self._together += 1
        try:
            yield
        finally:
            with self._lock:
                self._together -= 1
                due = not self._together and self._due()
                if due and self.background:
                    FLUSHER.schedule(self, 0.0)
                elif not due and not self._together and self._pending:
                    FLUSHER.schedule(self, time.monotonic() + self.max_delay)
            if due and not self.background:
                self.flush()

    def _due(self) -> bool:
        """Whether the pending batch, held by :meth:`together`, is due now (as its last event
        would have made it); the caller holds ``_lock``."""
        pending = self._pending
        return len(pending) >= self.index_batch or any(e.type in FSYNC_TYPES for e in pending)

    def flush(self) -> None:
        """Write the pending batch now (on this thread)."""
        # _io_lock orders the batches (and their sinks); _lock is held only to take the
        # batch, so emitting never waits for a write (nor for the database behind it).
        with self._io_lock:
            batch = self._take()
            if batch is None:
                return
            self._index(batch)
            self._finish(batch)

    def _take(self) -> list[Event] | None:
        """The pending batch, taken to be written (None when there is nothing to write);
        the caller holds ``_io_lock`` and owes :meth:`_finish` after indexing it."""
        with self._lock:
            batch, self._pending = self._pending, []
            FLUSHER.cancel(self)
            if not batch or self._file is None:
                return None
            return batch

    def _finish(self, batch: list[Event]) -> None:
        """Append an indexed batch, release the file lock when nothing is pending, and hand
        the batch to the sinks."""
        try:
            self._write(batch)
        finally:
            with self._lock:
                if not self._pending:
                    self._unlock_file()
        for stamped in batch:
            for sink in list(self._sinks):
                try:
                    sink(stamped)
                except Exception:
                    logger.exception(
                        "event sink %r failed on %s #%d", sink, stamped.type, stamped.seq
                    )

    def _write(self, batch: list[Event]) -> None:
        # model_dump_json() without its wrapper and the str round trip (the same bytes).
        data = b"".join(e.__pydantic_serializer__.to_json(e) + b"\n" for e in batch)
        assert self._file is not None
        try:
            write_all(self._file.fileno(), data)
            self._synced = False
            if any(e.type in FSYNC_TYPES for e in batch):
                os.fsync(self._file.fileno())
                self._synced = True
        except OSError:
            # Leave no half line behind, and no index rows for lines that are not there.
            self._truncate_to(self._size)
            self._forget(batch[0].seq - 1)
            with self._lock:
                if not self._pending:  # else later events hold the numbers after: a gap
                    self._seq = batch[0].seq - 1
            raise
        self._size += len(data)

    def _index(self, batch: list[Event]) -> None:
        if self.store is None:
            return
        try:
            numbers = self.store.record_events(self.task_id, [(e.seq, e.type, e.ts) for e in batch])
        except HalError as exc:  # a full disk, say: one line, as hal says its own failures
            logger.error("%s: could not index event #%d: %s", self.path, batch[0].seq,
                         exc.one_line())  # fmt: skip
            return
        except Exception:
            logger.exception("%s: could not index event #%d", self.path, batch[0].seq)
            return
        _numbered(batch, numbers)

    def _forget(self, seq: int) -> None:
        if self.store is None:
            return
        try:
            self.store.forget_events_after(self.task_id, seq)
        except HalError as exc:
            logger.error("%s: could not drop index rows past #%d: %s", self.path, seq,
                         exc.one_line())  # fmt: skip
        except Exception:
            logger.exception("%s: could not drop index rows past #%d", self.path, seq)

    def _truncate_to(self, size: int) -> None:
        if self._file is None:
            return
        try:
            os.ftruncate(self._file.fileno(), size)
        except OSError:
            logger.exception("%s: could not remove a partly written event", self.path)

    def close(self) -> None:
        """Write what is pending and close the file; further emits fail. Safe to call twice."""
        with self._lock:
            if self._file is None:
                return
        try:
            self.flush()
        finally:
            with self._io_lock, self._lock:
                FLUSHER.cancel(self)
                if self._file is not None:
                    owed = not self._synced
                    try:
                        st = os.fstat(self._file.fileno())
                        if not self._pending and st.st_size == self._size:
                            # Only lines of ours (or that we read back) since the size we
                            # know: another process's append, unlocked, would be past it.
                            self.left = Left.of(st, self._seq)
                        if owed and not self.background:
                            os.fsync(self._file.fileno())
                    finally:
                        self._unlock_file()
                        file, self._file = self._file, None
                        if owed and self.background:
                            # Written, so every reader sees it now; forced to disk on the
                            # flusher, as a background writer's phase events are: otherwise a
                            # daemon's new task would be answered and started only after it.
                            FLUSHER.sync_and_close(file)
                        else:
                            file.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
