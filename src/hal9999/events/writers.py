"""One event writer per task in a process, shared by everyone who records its events.

The runner, ``stop``/``cancel``, the reconciler, the scheduler's retries and recovery all
write a task's events; they get the same :class:`EventLog` (and so one ``seq`` counter and
one batch) while any of them holds it. Writers in other processes take turns with it on the
file's lock (see :mod:`hal9999.events.log`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hal9999.events.log import EventLog, Left, Sink
from hal9999.redact import SecretMasker
from hal9999.store import Store

LEFT_KEPT = 256
"""How many closed logs' states a process keeps (a few dozen bytes each)."""


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
        self._left: OrderedDict[str, tuple[Path, Left]] = OrderedDict()
        """The logs closed last, as they were left (see :class:`Left`), for a next open of
        the same file: a daemon's new task's log, closed once its creation is recorded,
        opened again when its run starts."""
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
                known = self._left.pop(task_id, None)
                log = EventLog(
                    path,
                    task_id,
                    store=self.store,
                    masker=masker,
                    index_batch=self.index_batch,
                    background=self.background,
                    left=known[1] if known is not None and known[0] == path else None,
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
                if entry.log.left is not None:
                    with self._lock:
                        self._left[task_id] = (path, entry.log.left)
                        if len(self._left) > LEFT_KEPT:
                            self._left.popitem(last=False)

    def is_open(self, task_id: str) -> bool:
        """Whether some user in this process holds the task's writer."""
        with self._lock:
            return task_id in self._open
