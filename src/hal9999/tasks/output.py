"""Following a run's output: the masked log and the events parsed from the raw output.

The supervisor (:mod:`hal9999.process.supervisor`) writes both; the runner stays the one
writer of the task's events and emits them from here, in log order.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hal9999.events.models import EVENT_ADAPTER, Event, Message, Output
from hal9999.events.own import HAL_NOTES
from hal9999.process.parsedevents import MAX_PARSED_RECORD
from hal9999.spec import ProcessSpec
from hal9999.tasks.context import RunContext

OUTPUT_EVENTS_CAP = 32 * 1024 * 1024
"""Characters of output one run records as ``output`` events at most (and never more than
half the log cap); the rest is only in the log, itself capped by the supervisor, so agent
output is not written to disk twice in full."""

_READ_CHUNK = 1024 * 1024
"""Log bytes read per step, so a large backlog neither stalls the loop nor fills memory:
each step's ``output`` event is masked on the loop as it is recorded (one regular expression
call, holding the GIL: a large output would stall the loop)."""


def _whole_utf8(data: bytes) -> int:
    """Where ``data`` ends but for a UTF-8 sequence whose remaining bytes have not arrived
    (held back until they do); a complete one at the end is not held."""
    cut = len(data)
    while cut > 0 and len(data) - cut < 3 and (data[cut - 1] & 0xC0) == 0x80:
        cut -= 1
    if cut == 0 or data[cut - 1] < 0xC0:
        return len(data)  # ASCII at the end, or continuation bytes without a lead: as they are
    lead = data[cut - 1]
    needs = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return len(data) if len(data) - (cut - 1) >= needs else cut - 1


_Shown = TypeVar("_Shown", str, Event)
"""What a display callback is handed: output text, or an event."""


class OutputFollower:
    """Reads a run's log and parsed-events file from where its events stop, and emits."""

    def __init__(
        self,
        ctx: RunContext,
        pspec: ProcessSpec,
        offset: int,
        parsed: int,
        *,
        emit: Callable[[RunContext, Event], None],
        cap: int = OUTPUT_EVENTS_CAP,
    ) -> None:
        self.ctx, self.pspec, self.emit = ctx, pspec, emit
        self.offset, self.parsed_offset = offset, parsed
        self.pending = b""
        self.recorded = 0
        self.capped = False
        self.cap = cap
        self.idle_since: tuple[int, ...] | None = None
        """What the log and parsed-events files looked like at the start of the last pump
        that found nothing to emit: while they look the same, there is nothing new."""

    def _files(self) -> tuple[int, ...]:
        """Inode and size of the log and the parsed-events file (-1 for one not there): both
        only grow, so the same figures mean nothing was written since."""
        figures: list[int] = []
        for path in (self.ctx.session.log, self.pspec.events_path):
            try:
                st = os.stat(path) if path is not None else None
            except FileNotFoundError:
                st = None
            figures += (st.st_ino, st.st_size) if st is not None else (-1, -1)
        return tuple(figures)

    def pump(self, final: bool = False) -> bool:
        """Emit what is new; returns whether there may be more to read right away.

        Between an agent's bursts of output most pumps find nothing: two ``stat`` calls then
        stand in for opening and reading both files (100 idle agents)."""
        files = None if final else self._files()
        if files is not None and files == self.idle_since:
            return False
        before = (self.offset, self.parsed_offset)
        more = self._pump(final)
        quiet = not more and (self.offset, self.parsed_offset) == before
        self.idle_since = files if quiet else None
        return more

    def _pump(self, final: bool) -> bool:
        try:
            with self.ctx.session.log.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(_READ_CHUNK)
        except FileNotFoundError:
            data = b""
        more = len(data) == _READ_CHUNK
        self.offset += len(data)
        data = self.pending + data
        last = final and not more
        cut = len(data) if last else _whole_utf8(data)
        self.pending, data = data[cut:], data[:cut]
        log_end = self.offset - len(self.pending)
        more = self.emit_parsed(log_end, everything=last) or more
        if data:
            self.emit_output(data.decode("utf-8", "replace"), log_end)
        return more

    def emit_parsed(self, log_end: int, *, everything: bool) -> bool:
        """Emit the parsed events the log read so far covers (all of them at the end);
        returns whether the file may hold more right away."""
        path = self.pspec.events_path
        if path is None:
            return False
        start = self.parsed_offset
        records, after = read_parsed(path, start)
        for record_end, event, end in records:
            if record_end > log_end and not everything:
                return False
            self.emit(self.ctx, event)
            if self.ctx.on_event is not None and event.type not in HAL_NOTES:
                self.show(self.ctx.on_event, event)  # notes: by the log's sink (shown_notes)
            self.parsed_offset = end
        self.parsed_offset = after
        return everything and after > start

    def show(self, callback: Callable[[_Shown], None], shown: _Shown) -> None:
        """Hand ``shown`` to a caller's display callback. When what it writes to went away
        (``hal run ... | head``, a closed terminal: an OSError such as EPIPE or EIO), the
        run goes on unseen, its work collected as always: the error ended the run as
        ``interrupted`` before, its agent's work not brought back (and, for output, not even
        recorded). Said once, in the events."""
        try:
            callback(shown)
        except OSError as exc:
            ctx = self.ctx
            ctx.on_output = ctx.on_event = None
            self.emit(
                ctx,
                Message(
                    level="warning",
                    text=f"the run's output can no longer be shown ({exc.strerror or exc}); "
                    f"the run goes on, its output in `hal task logs {ctx.task.id}`",
                ),
            )

    def emit_output(self, text: str, log_end: int) -> None:
        """Record a chunk of (already masked) output, within the per-run cap."""
        ctx = self.ctx
        room = max(0, self.cap - self.recorded)
        kept = text[:room]
        self.recorded += len(kept)
        event = Output(text=kept, log_end=log_end)
        self.emit(ctx, event)  # recorded before it is shown: showing can fail, recording not
        if ctx.on_output is not None:
            self.show(ctx.on_output, ctx.masker.mask(text))
        if ctx.on_event is not None and kept:
            self.show(ctx.on_event, event)
        if len(kept) < len(text) and not self.capped:
            self.capped = True
            self.emit(
                ctx,
                Message(
                    level="warning",
                    text=f"output events stop after {self.cap} characters; "
                    f"the rest is in the log (`hal task logs {ctx.task.id}`)",
                ),
            )


def shown_notes(ctx: RunContext) -> Callable[[Event], None]:
    """A sink for the run's event log that hands hal's notes (``HAL_NOTES``: a warning, a
    model call waiting on its upstream) to the run's ``on_event`` as they are recorded,
    wherever in the run they are made; the agent's own events reach it from the follower."""

    def sink(event: Event) -> None:
        show = ctx.on_event
        if show is not None and event.type in HAL_NOTES:
            with contextlib.suppress(OSError):  # shown where it can be: recorded anyway
                show(event)

    return sink


PARSED_CHUNK = 1 << 20
"""Bytes of the parsed-events file read per step."""


def read_parsed(path: Path, offset: int) -> tuple[list[tuple[int, Event, int]], int]:
    """Complete records of a parsed-events file from ``offset``: (log offset, event, file
    offset past the record) triples and the offset past the last complete line read.
    Unreadable lines are skipped."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(PARSED_CHUNK)
            if b"\n" not in data and len(data) == PARSED_CHUNK:  # a record past a chunk
                data += handle.read(MAX_PARSED_RECORD - len(data))
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= MAX_PARSED_RECORD:  # a record too long to read: skip it whole
            return [], offset + len(data)
        return [], offset
    records: list[tuple[int, Event, int]] = []
    position = offset
    for line in data[: end + 1].splitlines(keepends=True):
        position += len(line)
        try:
            record = json.loads(line)
            event = EVENT_ADAPTER.validate_python(record["event"])
            records.append((int(record["log_end"]), event, position))
        except (ValueError, KeyError, TypeError):
            continue
    return records, offset + end + 1


def parsed_offset_after(path: Path, log_end: int) -> int:
    """The offset in a parsed-events file of the first record not covered by ``log_end``
    (where an adopted run carries on)."""
    offset = 0
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0
    with handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                covered = int(json.loads(line)["log_end"]) <= log_end
            except (ValueError, KeyError, TypeError):
                covered = True
            if not covered:
                break
            offset += len(line)
    return offset
