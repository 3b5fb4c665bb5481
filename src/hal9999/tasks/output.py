"""Following a run's output: the masked log and the events parsed from the raw output.

The supervisor (:mod:`hal9999.process.supervisor`) writes both; the runner stays the one
writer of the task's events and emits them from here, in log order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hal9999.events.models import Event, Message, Output
from hal9999.process.supervisor import read_parsed
from hal9999.spec import ProcessSpec
from hal9999.tasks.context import RunContext

OUTPUT_EVENTS_CAP = 32 * 1024 * 1024
"""Characters of output one run records as ``output`` events at most (and never more than
half the log cap); the rest is only in the log, itself capped by the supervisor, so agent
output is not written to disk twice in full."""

_READ_CHUNK = 4 * 1024 * 1024
"""Log bytes read per step, so a large backlog neither stalls the loop nor fills memory."""


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


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

    def pump(self, final: bool = False) -> bool:
        """Emit what is new; returns whether there may be more to read right away."""
        try:
            with self.ctx.session.log.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(_READ_CHUNK)
        except FileNotFoundError:
            data = b""
        more = len(data) == _READ_CHUNK
        self.offset += len(data)
        data = self.pending + data
        # Hold back an incomplete UTF-8 sequence until its remaining bytes arrive.
        cut = len(data)
        last = final and not more
        while not last and cut > 0 and len(data) - cut < 4 and (data[cut - 1] & 0xC0) == 0x80:
            cut -= 1
        if not last and cut > 0 and data[cut - 1] >= 0xC0:
            cut -= 1
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
            if self.ctx.on_event is not None:
                self.ctx.on_event(event)
            self.parsed_offset = end
        self.parsed_offset = after
        return everything and after > start

    def emit_output(self, text: str, log_end: int) -> None:
        """Record a chunk of (already masked) output, within the per-run cap."""
        ctx = self.ctx
        if ctx.on_output is not None:
            ctx.on_output(ctx.masker.mask(text))
        room = max(0, self.cap - self.recorded)
        kept = text[:room]
        self.recorded += len(kept)
        event = Output(text=kept, log_end=log_end)
        self.emit(ctx, event)
        if ctx.on_event is not None and kept:
            ctx.on_event(event)
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
