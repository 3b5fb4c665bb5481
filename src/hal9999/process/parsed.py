"""Reading what the supervisor wrote: the parsed-events file of a run (JSON lines, each an
event and the log offset that covers it; see :class:`hal9999.process.supervisor.ParsedEvents`),
by the process that follows the run. Kept out of the supervisor's module, which every task's
supervisor imports."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from hal9999.events.models import Event


PARSED_CHUNK = 1 << 20
"""Bytes of the parsed-events file read per step."""

MAX_PARSED_RECORD = 8 << 20
"""The longest record of a parsed-events file read (longer ones are skipped). A record may
be longer than a chunk: a text field keeps 256 Ki characters, up to 1.5 MB as JSON (6 bytes
a non-ASCII character), and such an event was dropped without a word."""


def read_parsed(path: Path, offset: int) -> tuple[list[tuple[int, Event, int]], int]:
    """Complete records of a parsed-events file from ``offset``: (log offset, event, file
    offset past the record) triples and the offset past the last complete line read.
    Unreadable lines are skipped."""
    import json

    from hal9999.events.models import EVENT_ADAPTER

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
    import json

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
