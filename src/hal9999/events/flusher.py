"""The process's batch flusher: one background thread that writes event batches whose
delay ran out (see :class:`hal9999.events.log.EventLog`), indexing the batches it writes
together in one store transaction."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, BinaryIO

from hal9999.errors import HalError

if TYPE_CHECKING:
    from hal9999.events.log import EventLog
    from hal9999.events.models import Event

logger = logging.getLogger(__name__)


def _numbered(batch: list[Event], numbers: list[int]) -> None:
    for event, gseq in zip(batch, numbers, strict=True):
        # As `event.gseq = gseq` does, without pydantic's assignment handler.
        event.__dict__["gseq"] = gseq
        event.__pydantic_fields_set__.add("gseq")


def flush_together(logs: list[EventLog]) -> None:
    """Flush each log, indexing the batches of those sharing a store in one transaction
    (one a batch would be several a task in a daemon). Each log's batch is then
    appended and handed to its sinks in that order, which is their ``gseq`` order; a log
    whose writing fails is logged and the others still written. Should the shared
    transaction fail, each batch is indexed alone, so one task's bad batch costs no other
    its index rows."""
    taken: list[tuple[EventLog, list[Event]]] = []
    alone: list[EventLog] = []
    try:
        for log in logs:
            # Another thread writing this log (a close) goes first: flushed alone after.
            if not hasattr(log, "_take") or log.store is None or len(logs) == 1:
                alone.append(log)
            elif log._io_lock.acquire(blocking=False):
                batch = None
                try:
                    batch = log._take()
                finally:
                    if batch is None:
                        log._io_lock.release()
                if batch is not None:
                    taken.append((log, batch))
            else:
                alone.append(log)
        _index_together(taken)
        while taken:
            log, batch = taken[0]
            try:
                log._finish(batch)
            except (OSError, HalError) as exc:  # a full disk: one line, not a traceback
                logger.error("%s: writing a batch of events failed: %s", log.path, _said(exc))
            except Exception:
                logger.exception("%s: writing a batch of events failed", log.path)
            finally:
                taken.pop(0)
                log._io_lock.release()
    finally:
        for log, _ in taken:  # only after a BaseException
            log._io_lock.release()
    for log in alone:
        try:
            log.flush()
        except (OSError, HalError) as exc:
            logger.error("%s: writing a batch of events failed: %s", log.path, _said(exc))
        except Exception:
            logger.exception("%s: writing a batch of events failed", log.path)


def _said(exc: OSError | HalError) -> str:
    return exc.one_line() if isinstance(exc, HalError) else str(exc)


def _index_together(taken: list[tuple[EventLog, list[Event]]]) -> None:
    stores: dict[int, list[tuple[EventLog, list[Event]]]] = {}
    for log, batch in taken:
        stores.setdefault(id(log.store), []).append((log, batch))
    for group in stores.values():
        store = group[0][0].store
        assert store is not None
        try:
            numbers = store.record_events_of(
                [(log.task_id, [(e.seq, e.type, e.ts) for e in batch]) for log, batch in group]
            )
        except Exception:
            logger.warning("indexing %d tasks' events at once failed; one by one", len(group))
            for log, batch in group:
                log._index(batch)
            continue
        for (_, batch), gseqs in zip(group, numbers, strict=True):
            _numbered(batch, gseqs)


class _Flusher:
    """One background thread per process that writes batches whose delay ran out."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[EventLog, float] = {}
        self._closing: list[BinaryIO] = []
        """Files of closed background writers still to be fsync'ed and closed."""
        self._thread: threading.Thread | None = None
        self._until = math.inf
        """The deadline the thread sleeps until (infinity while it is not asleep)."""
        self.wakeups = 0
        """How many times the thread woke (for the benchmarks and tests)."""
        self.coalesce = 0.01
        """Batches due within this many seconds of a due one are written with it."""

    def schedule(self, log: EventLog, when: float) -> None:
        """Write ``log``'s batch at ``when`` (monotonic) unless it is written before."""
        with self._cond:
            self._due[log] = min(when, self._due.get(log, when))
            # Waking the thread for a deadline after the one it sleeps until would only
            # send it back to sleep: a thread switch per event of a busy daemon.
            if self._thread is None or not self._thread.is_alive() or when < self._until:
                self._wake()

    def sync_and_close(self, file: BinaryIO) -> None:
        """Force ``file`` (written and flushed) to disk and close it, on the thread."""
        with self._cond:
            self._closing.append(file)
            self._wake()

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="hal-event-flusher", daemon=True)
            self._thread.start()
        else:
            self._cond.notify()

    @property
    def thread(self) -> threading.Thread | None:
        """The background thread, once one started."""
        return self._thread

    def idle(self) -> bool:
        """Whether nothing is left to write or close and the thread (if any) is asleep: a
        process may then end without waiting for it (:func:`hal9999.cli.entry.exit_at_once`)."""
        with self._cond:
            thread = self._thread
            asleep = thread is None or not thread.is_alive() or self._until != math.inf
            return asleep and not self._due and not self._closing

    def cancel(self, log: EventLog) -> None:
        """Forget ``log``'s deadline (its batch was written)."""
        with self._cond:
            self._due.pop(log, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                self.wakeups += 1
                now = time.monotonic()
                ready = [log for log, when in self._due.items() if when <= now]
                if ready:  # and those due soon: written in the same transaction
                    soon = now + self.coalesce
                    ready = [log for log, when in self._due.items() if when <= soon]
                for log in ready:
                    del self._due[log]
                closing, self._closing = self._closing, []
                if not ready and not closing:
                    self._until = min(self._due.values(), default=now + 60)
                    try:
                        self._cond.wait(self._until - now)
                    finally:
                        self._until = math.inf
                    continue
            flush_together(ready)
            for file in closing:
                try:
                    os.fsync(file.fileno())
                except OSError:
                    logger.exception("%s: forcing events to disk failed", file.name)
                finally:
                    file.close()


FLUSHER = _Flusher()
"""The process's batch flusher."""
