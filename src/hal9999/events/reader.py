"""Reading event logs and output logs, once or following them as they grow.

Writers append whole lines, but a reader can catch a line half-written (or a crash can
leave one); an incomplete trailing line is never parsed, only held until it is finished.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from hal9999.events.models import Event, parse_event
from hal9999.home import unusable_session_file
from hal9999.redact import SecretMasker

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
"""Bytes read per step while following, so a large backlog does not stall the event loop."""
_BLOCK = 1 << 16


def parse_line(line: bytes, path: Path, *, warn: bool = True) -> Event | None:
    """One complete JSONL line as an event; ``None`` (with a warning) when it is not one."""
    if not line.strip():
        return None
    try:
        return parse_event(line)
    except (ValidationError, ValueError) as exc:
        if warn:
            logger.warning("%s: skipping a line that is not a valid event: %s", path, exc)
        return None


def rotated(path: Path) -> Path:
    """Where the older file of a rotated log is kept (``<name>.1``, see
    :mod:`hal9999.events.rotation`)."""
    return path.with_name(path.name + ".1")


def read_events(path: Path, *, after_seq: int = 0) -> list[Event]:
    """Every complete event in ``path`` with a seq above ``after_seq`` (none if missing),
    those of its rotated older file first (the new file's first event, a copy of the older
    file's last, once)."""
    older = _read_file(rotated(path), after_seq)
    return [*older, *_read_file(path, older[-1].seq if older else after_seq)]


def _read_file(path: Path, after_seq: int) -> list[Event]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise unusable_session_file(path, exc) from exc
    *lines, _partial = data.split(b"\n")
    events = []
    for line in lines:
        event = parse_line(line, path)
        if event is not None and event.seq > after_seq:
            events.append(event)
    return events


def lines_backwards(file: BinaryIO, end: int) -> Iterator[bytes]:
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


def events_after_seq(path: Path, after_seq: int) -> list[Event]:
    """The complete events of ``path`` above ``after_seq``, read from the end backwards (so
    the cost is the size of the tail, not of the file); from its rotated older file too
    when the current one starts above ``after_seq``."""
    found, reached = _backwards(path, after_seq, None)
    if not reached:
        older, _ = _backwards(rotated(path), after_seq, found[-1].seq if found else None)
        found += older
    found.reverse()
    return found


def _backwards(path: Path, after_seq: int, below: int | None) -> tuple[list[Event], bool]:
    """The events of ``path`` above ``after_seq`` (and below ``below``), last first, and
    whether an event at or under ``after_seq`` was reached."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return [], False
    except OSError as exc:
        raise unusable_session_file(path, exc) from exc
    found: list[Event] = []
    with file:
        size = file.seek(0, os.SEEK_END)
        for index, line in enumerate(lines_backwards(file, size)):
            if index == 0:
                continue  # what follows the last newline: incomplete (or empty)
            event = parse_line(line, path, warn=False)
            if event is None:
                continue
            if event.seq <= after_seq:
                return found, True
            if below is None or event.seq < below:
                found.append(event)
    return found, False


def by_gseq(events: list[Event], gseqs: dict[int, int]) -> dict[int, Event]:
    """A task's events read from its file, by ``gseq``, for index rows followed by ``gseq``.

    ``gseqs`` maps the wanted rows' seq to their gseq. A line carries its gseq when its batch
    indexed as it was written; one written while the store failed carries 0 and was indexed
    later by the next writer (:mod:`hal9999.events.log`): it is matched by its seq and given
    its row's number. A line with a number is matched by it only (a seq whose row a killed
    writer left and the next one numbered again is not the row's event)."""
    found: dict[int, Event] = {}
    for event in events:
        if event.gseq:
            found[event.gseq] = event
        elif event.seq in gseqs:
            gseq = gseqs[event.seq]
            found[gseq] = event.model_copy(update={"gseq": gseq})
    return found


def _read_chunk(path: Path, offset: int) -> tuple[bytes, int, int] | None:
    """Up to ``_CHUNK`` bytes of ``path`` from ``offset``, the file's size and its inode."""
    try:
        with path.open("rb") as file:
            st = os.fstat(file.fileno())
            if offset >= st.st_size:
                return b"", st.st_size, st.st_ino
            file.seek(offset)
            return file.read(_CHUNK), st.st_size, st.st_ino
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unusable_session_file(path, exc) from exc


def _next_read(
    path: Path, offset: int, inode: int | None
) -> tuple[bytes, int | None, bytes | None, int | None]:
    """What a follower of ``path`` (read up to ``offset`` of the file ``inode``) reads next:
    ``(data, inode, rest, shrunk)``. ``rest`` is not None when the file was rotated: what
    the old file held past ``offset`` (the follower finishes it, then reads the new one from
    its top); ``shrunk`` is the file's size when it is shorter than ``offset`` (cut or
    replaced); else ``data`` holds the new bytes (none when nothing was appended or the
    file is missing)."""
    got = _read_chunk(path, offset)
    if got is None:
        return b"", inode, None, None
    data, size, now = got
    if inode is not None and now != inode:
        return b"", now, _rest_of_rotated(path, inode, offset), None
    if size < offset:
        return b"", now, None, size
    return data, now, None, None


def _rest_of_rotated(path: Path, inode: int, offset: int) -> bytes:
    """What the file a follower read up to ``offset`` holds past it, when it was rotated
    (it is ``<name>.1`` now, the same inode): a follower finishes it first."""
    older = rotated(path)
    try:
        with older.open("rb") as file:
            if os.fstat(file.fileno()).st_ino != inode:
                return b""
            file.seek(offset)
            return file.read()
    except OSError:
        return b""


async def follow_events(
    path: Path,
    *,
    after_seq: int = 0,
    stop: Callable[[], bool],
    poll: float = 0.1,
) -> AsyncIterator[Event]:
    """Yield the events of ``path`` above ``after_seq``, then new ones as they are written.

    Ends once ``stop()`` is true and everything written before that has been yielded.
    Each seq is yielded at most once, in increasing order.
    """
    import asyncio  # here: a reader that does not follow (`hal task events`) needs none

    offset = 0
    pending = b""
    last = after_seq
    retried = -1
    inode: int | None = None
    while True:
        # Ask before reading: an empty read after stop() turned true means fully drained.
        stopping = stop()
        data, inode, rest, shrunk = _next_read(path, offset, inode)
        if rest is not None:
            for line in (pending + rest).split(b"\n")[:-1]:
                event = parse_line(line, path, warn=False)
                if event is not None and event.seq > last:
                    last = event.seq
                    yield event
            offset, pending = 0, b""
            continue
        if shrunk is not None:
            # The writer cut a crash-truncated line away: re-read from that line's start,
            # or from the top if the file was replaced (seq dedupe drops repeats).
            line_start = offset - len(pending)
            offset = line_start if shrunk >= line_start else 0
            pending = b""
            continue
        if not data:
            if stopping:
                return
            await asyncio.sleep(poll)
            continue
        line_start = offset - len(pending)
        carried = bool(pending)
        offset += len(data)
        *lines, pending = (pending + data).split(b"\n")
        for index, line in enumerate(lines):
            if index == 0 and carried and line_start != retried:
                event = parse_line(line, path, warn=False)
                if event is None and line.strip():
                    # The half line held from the last read may have been truncated away
                    # and the file regrown past it before this read: re-read from there.
                    retried = line_start
                    offset, pending = line_start, b""
                    break
            else:
                event = parse_line(line, path)
            if event is not None and event.seq > last:
                last = event.seq
                yield event


async def follow_text(
    path: Path,
    *,
    offset: int = 0,
    stop: Callable[[], bool],
    poll: float = 0.1,
    masker: SecretMasker | None = None,
) -> AsyncIterator[str]:
    """Yield the text of ``path`` from byte ``offset`` on, then text appended to it.

    Waits for a file that does not exist yet. Ends once ``stop()`` is true and the file is
    drained. With a ``masker``, secrets are masked even when split across reads.
    """
    import asyncio

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    stream = masker.stream() if masker is not None else None
    inode: int | None = None
    while True:
        stopping = stop()
        data, inode, rest, shrunk = _next_read(path, offset, inode)
        if shrunk is not None:
            # Truncated or replaced: start over rather than wait for it to regrow.
            offset = 0
            decoder.reset()
            continue
        if rest is not None:
            offset, data = 0, rest
        else:
            offset += len(data)
        if data or rest is not None:
            text = decoder.decode(data)
            if stream is not None:
                text = stream.feed(text)
            if text:
                yield text
            continue
        if stopping:
            tail = decoder.decode(b"", final=True)
            if stream is not None:
                tail = stream.feed(tail) + stream.flush()
            if tail:
                yield tail
            return
        await asyncio.sleep(poll)
