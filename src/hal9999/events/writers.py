"""One event writer per task in a process, shared by everyone who records its events.

The runner, ``stop``/``cancel``, the reconciler, the scheduler's retries and recovery all
write a task's events; they get the same :class:`EventLog` (and so one ``seq`` counter and
one batch) while any of them holds it. Writers in other processes take turns with it on the
file's lock (see :mod:`hal9999.events.log`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hal9999.events.log import EventLog, Sink
from hal9999.redact import SecretMasker
from hal9999.store import Store


class _Open:
    __slots__ = ("log", "users")

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.users = 0


class EventWriters:
    """Opens each task's event log once, and closes it when its last user is done."""

    def __init__(
        self, store: Store | None, *, index_batch: int = 1, sinks: tuple[Sink, ...] = ()
    ) -> None:
        self.store = store
        self.index_batch = index_batch
        self.sinks = list(sinks)
        """Every writer hands its events to these (the process's event bus)."""
        self.background = False
        """Writers write on the flusher thread only (set by the daemon: see ``EventLog``)."""
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    @contextmanager
    def open(
        self, task_id: str, path: Path, masker: SecretMasker | None = None
    ) -> Iterator[EventLog]:
        """The task's writer; ``masker``'s secrets are masked in everything it writes from
        now on (a shared writer masks the secrets of all its users)."""
        with self._lock:
            entry = self._open.get(task_id)
            if entry is None:
                log = EventLog(
                    path,
                    task_id,
                    store=self.store,
                    masker=masker,
                    index_batch=self.index_batch,
                    background=self.background,
                )
                for sink in self.sinks:
                    log.add_sink(sink)
                entry = self._open[task_id] = _Open(log)
            elif masker is not None:
                entry.log.add_masker(masker)
            entry.users += 1
        try:
            yield entry.log
        finally:
            with self._lock:
                entry.users -= 1
                last = entry.users == 0
                if last:
                    del self._open[task_id]
            if last:
                entry.log.close()

    def is_open(self, task_id: str) -> bool:
        """Whether some user in this process holds the task's writer."""
        with self._lock:
            return task_id in self._open
