"""The gateway's record of every call: durable in the store before the agent has its answer.

Budgets and counters live in the store: a call's row is committed before the last byte of its
response reaches the agent (see :meth:`AnswerRelay.relay`), so a gateway killed at any moment has
lost no spend that an agent saw, and a new gateway reads the truth back from the store.

The commit is grouped and, when it cannot wait, never on the event loop: rows added in one
turn of the loop are committed together at the end of that turn, on a connection of the
ledger's own that never waits for a lock (``busy_timeout = 0``) and never checkpoints (no
fsync). A WAL commit like that is a write into the page cache, far cheaper than
handing the batch to a thread (the GIL hand-off and the wake-up cost CPU and more of
wall clock per call on a loaded machine). When another process holds the write lock, the
batch goes to the ledger's thread instead, which waits for the lock there (up to the store's
busy timeout) while the loop serves on; rows that arrive meanwhile wait for the next commit.
The WAL is checkpointed by that thread too, every :data:`CHECKPOINT_EVERY` commits, passively.
In a store that is not in WAL mode (a filesystem that refused it) every commit goes to the
thread: a rollback-journal commit syncs.

The spend per task and per UTC day is also kept in memory, read from the store once and then
advanced by this process, which is the only writer of this HAL_HOME's calls (one gateway per
HAL_HOME, held by its lock).

A row the store refuses (disk full, I/O error, a read-only or damaged database, a lock held
past the busy timeout) would be spend counted only in memory, lost at a restart: its task is
put in :attr:`Ledger.unrecorded`, and the gateway withholds the end of that answer and
refuses the task's further calls (it fails closed), with a log line for the operator. The
refused rows are kept, in memory and in the gateway's ``unrecorded.jsonl`` (written whole,
fsynced and renamed into place by the ledger's thread before the answer is withheld), and
written again when the task's next call arrives (at most every :data:`RETRY_S`,
:meth:`Ledger.recover`); once all of them are in the store the task is served again and the
file goes. A gateway that starts reads the file back: its rows count in the spend at once,
are written to the store (those an earlier gateway stored before it could rewrite the file
are recognised and skipped), and their tasks stay refused until that succeeds; the file is
rewritten once, after all of them were tried.

A call is marked open in the store when it goes upstream (:meth:`Ledger.open`, in the same
group commit as the rows) and the mark goes with its row: a gateway killed mid-call (a stream
cut, its row never written) leaves the mark, and the next gateway records each such call as
``interrupted`` (:meth:`Ledger.close_interrupted`), so the task's calls count it. A mark whose
call's row is in the store after all (its removal lost) records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from hal9999 import agentfs, fs
from hal9999.store import Store
from hal9999.store.gateway import GatewayRequest, GatewayTable

logger = logging.getLogger(__name__)

_COLUMNS = [name for name in GatewayRequest.model_fields if name != "id"]
_INSERT_ONE = (f"INSERT INTO gateway_requests ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join(':' + name for name in _COLUMNS)})")  # fmt: skip
CHECKPOINT_EVERY = 200
"""Commits on the loop between two passive WAL checkpoints (in the ledger's thread)."""
RETRY_S = 1.0
"""The least time between two attempts to store the rows of a task the store refused."""


class _Writer(GatewayTable):
    """A connection of the ledger's own that gives up at once when the database is locked
    and leaves checkpoints (the fsyncs) to others: cheap enough for the event loop."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, timeout=0, isolation_level=None,
                                    check_same_thread=False)  # fmt: skip
        self.conn.execute("PRAGMA busy_timeout = 0")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")  # sqlite3.OperationalError at once when locked
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def add_one(self, row: GatewayRequest) -> None:
        """One row, in a transaction of its own (one statement where a batch takes three)."""
        self.conn.execute(_INSERT_ONE, row.model_dump(exclude={"id"}))

    def close(self) -> None:
        self.conn.close()


class Ledger:
    """Spend per task and per day, and the group commit of call rows."""

    def __init__(self, store: Store, unrecorded: Path | None = None) -> None:
        self.store = store
        self._spill = unrecorded
        """Where the rows the store refused are kept across a restart (None: memory only)."""
        self.spent: dict[str, tuple[int, float]] = {}
        """Tokens and dollars per task so far (read from the store once, then advanced)."""
        self.day: tuple[float, int, float] | None = None
        """The current UTC day's start, tokens and dollars over all tasks."""
        self._queue: list[GatewayRequest] = []
        self._opened: list[tuple[str, GatewayRequest]] = []
        """Calls that went upstream, by key, to mark open with the next commit."""
        self._closed: list[str] = []
        """Keys of open calls whose rows are in the queue, to unmark with them."""
        self._keys: dict[int, str] = {}
        """The key of each call marked open, by its record's identity (the record
        :meth:`add` gets at its end is the one :meth:`open` got)."""
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count()
        self._queued: asyncio.Future[None] | None = None
        """Resolved once the rows now in the queue are committed."""
        self._writing: asyncio.Future[None] | None = None
        """The batch the ledger's thread is committing (the database was locked)."""
        self._flushing = False
        """A commit of the queue is scheduled at the end of this turn of the loop."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hal-ledger")
        self._writer: _Writer | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._fast = store.journal_mode() == "wal"
        self.commits = 0
        """Transactions that stored call rows, on the loop or in the thread."""
        self.handed_off = 0
        """Of those, the ones handed to the thread (the database was locked)."""
        self.unrecorded: dict[str, str] = {}
        """Tasks a call of which the store refused, and why: they get no more calls until
        :meth:`recover` has stored their rows."""
        self._unwritten: dict[str, list[GatewayRequest]] = {}
        """By task: the rows the store refused, kept to be written again (changed only in
        the ledger's thread, or before the loop runs)."""
        self._retrying: dict[str, asyncio.Future[None]] = {}
        self._retried: dict[str, float] = {}
        """By task: when its rows were last tried again (monotonic)."""
        self._replay()

    def task_spent(self, task_id: str) -> tuple[int, float]:
        """Tokens and dollars of ``task_id`` so far."""
        if task_id not in self.spent:
            tokens, cost = self.store.gateway_spent(task_id=task_id)
            more, dollars = _sum(self._unwritten.get(task_id, []))
            self.spent[task_id] = (tokens + more, cost + dollars)
        return self.spent[task_id]

    def day_spent(self) -> tuple[int, float]:
        """Tokens and dollars of today (UTC) over every task of this HAL_HOME."""
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.day is None or self.day[0] != midnight.timestamp():
            since = midnight.timestamp()
            tokens, cost = self.store.gateway_spent(since=since)
            kept = [r for rows in list(self._unwritten.values()) for r in rows if r.ts >= since]
            more, dollars = _sum(kept)  # the store does not have them yet
            self.day = (since, tokens + more, cost + dollars)
        return self.day[1], self.day[2]

    def today(self) -> str:
        """The UTC day :meth:`day_spent` last counted (its start, epoch seconds), as a key."""
        if self.day is None:
            self.day_spent()
        assert self.day is not None
        return f"{self.day[0]:.0f}"

    def open(self, record: GatewayRequest) -> None:
        """Mark the call of ``record`` open (it goes upstream now) until :meth:`add` gets
        its row: a gateway killed meanwhile leaves it to :meth:`close_interrupted`."""
        key = f"{self._prefix}-{next(self._count)}"
        self._keys[id(record)] = key
        self._opened.append((key, record))
        self._schedule(asyncio.get_running_loop())

    def close_interrupted(self) -> None:
        """Record the calls an earlier gateway left open (it died mid-call) as
        ``interrupted``; by the gateway that holds the HAL_HOME's lock, at its start."""
        try:
            count = self.store.close_interrupted_calls()
        except Exception as exc:  # a store that cannot be written: the marks wait for later
            logger.error("gateway: could not record the calls in flight at the last stop (%s)",
                         exc)  # fmt: skip
            return
        if count:
            logger.warning("gateway: %d calls were in flight when the last gateway died; "
                           "recorded as interrupted", count)  # fmt: skip

    def _unmark(self, record: GatewayRequest) -> None:
        """The call of ``record`` has its row: its open mark goes (never written, if it is
        still waiting for the commit)."""
        key = self._keys.pop(id(record), None)
        if key is None:
            return
        pending = [i for i, (k, _) in enumerate(self._opened) if k == key]
        if pending:
            del self._opened[pending[0]]
        else:
            self._closed.append(key)

    def add(self, record: GatewayRequest) -> asyncio.Future[None] | None:
        """Count ``record`` and queue it; the future resolves once it is committed (None:
        written already, there being no event loop)."""
        self._unmark(record)
        cost = record.cost_usd or 0.0
        if self.day is not None and record.ts >= self.day[0]:
            start, tokens, dollars = self.day
            self.day = (start, tokens + record.total_tokens, dollars + cost)
        if record.task_id in self.spent:
            tokens, dollars = self.spent[record.task_id]
            self.spent[record.task_id] = (tokens + record.total_tokens, dollars + cost)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            closed, self._closed = self._closed, []
            self._commit([record], (), closed)
            return None
        self._queue.append(record)
        if self._queued is None:
            self._queued = loop.create_future()
        queued = self._queued
        self._schedule(loop)
        return queued

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._writing is None and not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush, loop)  # after every row this turn of the loop adds

    def _pending(self) -> bool:
        return bool(self._queue or self._opened or self._closed)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flushing = False
        if self._writing is not None or not self._pending():
            return  # the thread's batch, when done, flushes what queued meanwhile
        batch, done = self._queue, self._queued
        opened, closed = self._opened, self._closed
        self._queue, self._queued, self._opened, self._closed = [], None, [], []
        try:
            if self._commit_here(batch, opened, closed):
                if done is not None and not done.done():
                    done.set_result(None)
                return
            self.handed_off += 1
            self._writing = loop.run_in_executor(self._thread, self._commit, batch, opened, closed)
        except Exception as exc:  # a ledger closed under its callers: they hear why
            logger.error("gateway: %d calls could not be handed to the store (%s)", len(batch),
                         exc)  # fmt: skip
            _fail(done, exc)
            return
        self._writing.add_done_callback(lambda writing: self._written(loop, done, writing))

    def _commit_here(
        self,
        batch: list[GatewayRequest],
        opened: list[tuple[str, GatewayRequest]],
        closed: list[str],
    ) -> bool:
        """Commit ``batch`` (and the marks of calls opened and closed) on this thread unless
        that would wait (False: it did not)."""
        if not self._fast:
            return False
        try:
            if self._writer is None:
                self._writer = _Writer(self.store.path)
            if len(batch) == 1 and not opened and not closed:
                self._writer.add_one(batch[0])
            else:
                self._writer.add_gateway_requests(batch, opened, closed)
        except Exception as exc:  # not only sqlite3.Error: a value SQLite cannot bind too
            if "locked" not in str(exc) and "busy" not in str(exc):
                logger.warning("gateway: the ledger's own commit failed (%s); in its thread", exc)
            return False  # the thread stores the rows one by one and refuses the bad ones
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0:
            self._thread.submit(self._checkpoint)
        return True

    def _checkpoint(self) -> None:
        # In the thread, on a connection of its own: a checkpoint copies pages and syncs.
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.store.path, timeout=0,
                                                     check_same_thread=False)  # fmt: skip
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            logger.warning("gateway: WAL checkpoint failed: %s", exc)

    def _written(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[None] | None,
        writing: asyncio.Future[None],
    ) -> None:
        self._writing = None
        exc = None if writing.cancelled() else writing.exception()
        if exc is not None:  # its tasks are refused already (see _commit): the callers hear
            logger.error("gateway: storing calls failed: %s", exc, exc_info=exc)
            _fail(done, exc)
        else:
            self.commits += 1
            if done is not None and not done.done():
                done.set_result(None)
        if self._pending() and not self._flushing:
            self._flush(loop)  # the next batch goes on whatever became of this one

    def _commit(
        self,
        records: list[GatewayRequest],
        opened: Sequence[tuple[str, GatewayRequest]] = (),
        closed: Sequence[str] = (),
    ) -> None:
        """Store ``records`` (and the marks of calls opened and closed); keep those the
        store refuses (in the file too) and refuse their tasks. In the ledger's thread (or
        before the loop runs)."""
        try:
            if opened or closed:
                refused = self._store_marked(records, opened, closed)
            else:
                refused = self._store(records)
        except Exception as exc:  # unforeseen: every row is refused (and kept), none lost
            logger.exception("gateway: could not record %d calls; their tasks' further calls "
                             "are refused", len(records))  # fmt: skip
            refused = [(record, str(exc) or type(exc).__name__) for record in records]
        for record, why in refused:
            self.unrecorded.setdefault(record.task_id, why)
            self._unwritten.setdefault(record.task_id, []).append(record)
        if refused:
            self._keep()

    def _store_marked(
        self,
        records: list[GatewayRequest],
        opened: Sequence[tuple[str, GatewayRequest]],
        closed: Sequence[str],
    ) -> list[tuple[GatewayRequest, str]]:
        """:meth:`_store` with the marks of calls opened and closed, in one transaction when
        the store takes it all."""
        try:
            self.store.add_gateway_requests(records, opened, closed)
            return []
        except Exception:
            logger.exception("gateway: could not record %d calls with the marks of %d calls "
                             "in flight", len(records), len(opened))  # fmt: skip
        try:  # a lost mark is a call not told interrupted, or told needlessly
            self.store.add_gateway_requests([], opened, closed)
        except Exception:
            logger.exception("gateway: could not mark %d calls in flight", len(opened))
        return self._store(records) if records else []

    def _store(self, records: list[GatewayRequest]) -> list[tuple[GatewayRequest, str]]:
        """Store ``records``: those the store refused, and why."""
        try:
            self.store.add_gateway_requests(records)
            return []
        except Exception:
            logger.exception("gateway: could not record %d calls at once", len(records))
        refused = []
        for record in records:  # one bad row must not lose the others
            try:
                self.store.add_gateway_request(record)
            except Exception as exc:
                logger.exception("gateway: could not record a call of task %s; its further "
                                 "calls are refused", record.task_id)  # fmt: skip
                refused.append((record, str(exc) or type(exc).__name__))
        return refused

    def _store_again(self, task_id: str) -> None:
        """Write ``task_id``'s refused rows again; keep those still refused. In the ledger's
        thread (or before the loop runs), like every change of the kept rows."""
        self._store_kept(task_id)
        self._keep()

    def _store_kept(self, task_id: str) -> None:
        """Write ``task_id``'s refused rows again, leaving the file as it is."""
        rows = self._unwritten.get(task_id)
        if rows:
            refused = self._store(list(rows))
            if refused:
                self._unwritten[task_id] = [record for record, _ in refused]
                self.unrecorded[task_id] = refused[0][1]
            else:
                del self._unwritten[task_id]

    def _keep(self) -> None:
        """Make the file of kept rows match :attr:`_unwritten` (gone when it is empty)."""
        if self._spill is None:
            return
        rows = [r for kept in list(self._unwritten.values()) for r in kept]
        try:
            if rows:
                self._spill.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                lines = b"".join(r.model_dump_json(exclude={"id"}).encode() + b"\n" for r in rows)
                agentfs.write_host_file(self._spill, iter([lines]))
            elif self._spill.exists():
                self._spill.unlink()
                fs.fsync_dir(self._spill.parent)
        except Exception as exc:  # OSError, or a row that cannot be written as JSON
            logger.error("gateway: could not keep %d unrecorded calls in %s (%s): a restart "
                         "now forgets them", len(rows), self._spill, exc)  # fmt: skip

    def _replay(self) -> None:
        """Take back the rows an earlier gateway kept (its store refused them) and store
        them; their tasks stay refused until that succeeds. The file is rewritten once, after
        every task's rows were tried: until then it still holds them all, so a gateway that
        dies meanwhile loses none (the next one skips those already stored)."""
        if self._spill is None:
            return
        try:
            lines = self._spill.read_bytes().splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.error("gateway: cannot read the unrecorded calls in %s (%s)", self._spill, exc)
            return
        for line in lines:
            try:
                row = GatewayRequest.model_validate_json(line)
            except ValueError:  # damaged (it is written whole and renamed into place)
                logger.warning("gateway: skipped an unreadable line of %s", self._spill)
                continue
            try:
                if self.store.gateway_request_stored(row):
                    continue  # stored by the earlier gateway before it could rewrite the file
            except Exception:  # an unreadable store: keep the row, it is written below or later
                logger.exception("gateway: cannot check the store for a kept call")
            self._unwritten.setdefault(row.task_id, []).append(row)
        for task_id in list(self._unwritten):
            count = len(self._unwritten[task_id])
            self._store_kept(task_id)
            state = "in the store now"
            if task_id in self._unwritten:
                state = "still not in the store (its calls are refused)"
            logger.warning("gateway: %d calls of task %s kept at the last stop are %s", count,
                           task_id, state)  # fmt: skip
        self._keep()

    async def recover(self, task_id: str) -> str | None:
        """Write ``task_id``'s refused rows again (at most every :data:`RETRY_S`; calls that
        arrive meanwhile share the attempt): why its spend is still not all in the store, or
        None once it is (the task is served again)."""
        if task_id not in self.unrecorded:
            return None
        retry = self._retrying.get(task_id)
        if retry is None:
            if time.monotonic() - self._retried.get(task_id, -RETRY_S) < RETRY_S:
                return self.unrecorded.get(task_id)
            retry = self._retrying[task_id] = asyncio.ensure_future(self._retry(task_id))
        await asyncio.shield(retry)
        return self.unrecorded.get(task_id)

    async def _retry(self, task_id: str) -> None:
        try:
            # In the thread, after any batch queued there before (one worker).
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._store_again, task_id)
            if not self._unwritten.get(task_id):
                self.unrecorded.pop(task_id, None)
                self._retried.pop(task_id, None)
                logger.warning("gateway: the calls of task %s are recorded now; it is served "
                               "again", task_id)  # fmt: skip
        finally:
            if task_id in self.unrecorded:
                self._retried[task_id] = time.monotonic()
            self._retrying.pop(task_id, None)

    async def drain(self) -> None:
        """Wait until every call so far is in the store."""
        while self._writing is not None or self._queued is not None or self._flushing:
            waiting = self._queued or self._writing
            if waiting is not None:
                with contextlib.suppress(Exception):  # a failed write: logged, callers told
                    await asyncio.shield(waiting)
            # A finished write's own callback (which starts the next batch) runs in a later
            # turn of the loop: awaiting a done future does not yield, so yield here.
            await asyncio.sleep(0)

    def close(self) -> None:
        """Stop the ledger's thread and close its connection (after :meth:`drain`)."""
        self._thread.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None


def _sum(rows: list[GatewayRequest]) -> tuple[int, float]:
    """The tokens and dollars of ``rows``."""
    return sum(r.total_tokens for r in rows), sum(r.cost_usd or 0.0 for r in rows)


def _fail(done: asyncio.Future[None] | None, exc: BaseException) -> None:
    """Tell the callers waiting on ``done`` that their rows were not stored (``exc``)."""
    if done is not None and not done.done():
        done.set_exception(exc)
        # A caller that did not wait (a refusal's record) has the error in the log already.
        done.add_done_callback(lambda future: future.exception())
