"""The process supervisor: runs one command, parses and masks its output, records its exit.

Both process managers run the agent under this small program (``python -m
hal9999.process.supervisor``) so that output handling is the same whether the agent lives in a
tmux pane or is a plain child. The agent's *raw* output goes to its parser first (``--parser``
names the agent), so usage, cost and tool calls are read from what the agent really printed;
the parsed events are masked field by field (numbers are never touched) and appended to the
``--events`` file, each line tagged with the log offset it belongs to, for the runner to emit.
Only then is the text masked, for the terminal (what ``hal task attach`` shows) and for the
log, which is capped (see :mod:`hal9999.process.caplog`). When the command ends its exit
status is written atomically to the exit file, which survives the ``hal`` process that
started the run.

The names of the secret variables come in ``--mask-var`` options (values read from this
process's own environment, never from argv); ``--mask-file`` names host credential files
whose token-like values are secrets too.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from hal9999.process.caplog import CappedLog
from hal9999.redact import SecretMasker, StreamMasker

if TYPE_CHECKING:  # imported only with a parser: the supervisor starts on every task's path
    from hal9999.agents.base import OutputParser
    from hal9999.events.models import Event


def write_exit_status(path: Path, status: int) -> None:
    """Record ``status`` at ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{status}\n")
    os.replace(tmp, path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hal-supervisor")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--exit", type=Path, required=True, dest="exit_file")
    parser.add_argument("--mask-var", action="append", default=[])
    parser.add_argument("--mask-file", action="append", default=[], type=Path)
    parser.add_argument("--parser", help="agent (preset name or template) whose parser to run")
    parser.add_argument("--events", type=Path, help="where parsed events go (JSON lines)")
    parser.add_argument("--log-cap", type=int, help="bytes of output kept in the log per run")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("a command is required after --")
    return args


def _masker(args: argparse.Namespace) -> SecretMasker:
    masker = SecretMasker()
    for name in args.mask_var:
        value = os.environ.get(name)
        if value:
            masker.add(value)
    if args.mask_file:  # only then: hal9999.credentials brings the config's models
        from hal9999.credentials import file_secrets

        for path in args.mask_file:
            for value in file_secrets(path):
                masker.add(value)
    return masker


class ParsedEvents:
    """Runs the agent's parser on raw output; appends masked events to the events file.

    A parser that cannot be loaded or that breaks is dropped with a note in ``problems``: the
    agent's run and its log must never depend on it."""

    def __init__(self, agent: str | None, path: Path | None, masker: SecretMasker) -> None:
        self._parser: OutputParser | None = None
        self._file: TextIO | None = None
        self._masker = masker
        self.problems: list[str] = []
        """What went wrong with parsing (written to the log by the caller)."""
        self._written = 0
        self._capped = False
        if agent is None or path is None:
            return
        from hal9999.agents.registry import resolve_agent

        try:
            self._parser = resolve_agent(agent).parser()
        except Exception as exc:  # a broken plugin must not stop the agent
            self.problems.append(f"hal: no parsed events for this run: {exc}\n")
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "w", encoding="utf-8")

    def feed(self, text: str, log_end: int) -> None:
        """Parse a chunk of raw output; ``log_end`` is where the log stands after it."""
        if self._parser is not None:
            self._run(lambda parser: parser.feed(text), log_end)

    def close(self, log_end: int) -> None:
        """End of output: flush the parser's held state."""
        if self._parser is not None:
            self._run(lambda parser: parser.close(), log_end)
        if self._file is not None:
            self._file.close()

    def _run(self, step: Callable[[OutputParser], list[Event]], log_end: int) -> None:
        assert self._parser is not None
        try:
            events = step(self._parser)
        except Exception as exc:  # parsers must not raise; one that does is dropped
            self._parser = None
            self.problems.append(f"hal: the output parser failed and was stopped: {exc!r}\n")
            return
        if not events or self._file is None:
            return
        for event in events:
            if self._written >= PARSED_CAP and event.type not in ESSENTIAL_TYPES:
                if not self._capped:
                    self._capped = True
                    self.problems.append(
                        f"hal: parsed events past {PARSED_CAP} bytes keep only usage, "
                        "session and messages\n"
                    )
                continue
            data = _clip(self._masker.mask_model(event).model_dump(mode="json"))
            line = json.dumps({"log_end": log_end, "event": data}) + "\n"
            self._file.write(line)
            self._written += len(line)
        self._file.flush()


MAX_EVENT_TEXT = 256 * 1024
"""Characters of one text field a parsed event keeps (the whole text is in the log)."""

PARSED_CAP = 64 * 1024 * 1024
"""Bytes of parsed events one run writes before only :data:`ESSENTIAL_TYPES` are kept."""

ESSENTIAL_TYPES = frozenset({"usage", "agent_session", "message"})
"""Events kept past the cap: usage and cost stay exact, errors stay visible."""


def _clip(value: Any) -> Any:
    """``value`` with every string longer than :data:`MAX_EVENT_TEXT` cut, saying so."""
    if isinstance(value, str) and len(value) > MAX_EVENT_TEXT:
        left = len(value) - MAX_EVENT_TEXT
        return value[:MAX_EVENT_TEXT] + f"… [hal: {left} more characters in the log]"
    if isinstance(value, dict):
        return {key: _clip(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clip(item) for item in value]
    return value


PARSED_CHUNK = 1 << 20
"""Bytes of the parsed-events file read per step."""


def read_parsed(path: Path, offset: int) -> tuple[list[tuple[int, Event, int]], int]:
    """Complete records of a parsed-events file from ``offset``: (log offset, event, file
    offset past the record) triples and the offset past the last complete line read.
    Unreadable lines are skipped."""
    from hal9999.events.models import EVENT_ADAPTER

    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(PARSED_CHUNK)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= PARSED_CHUNK:  # one line longer than a chunk: skip it whole
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


def supervise(argv: list[str]) -> int:
    """Run the command described by ``argv``; return its exit status."""
    args = _parse(argv)
    masker = _masker(args)
    stream = StreamMasker(masker)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    log = CappedLog(args.log, args.log_cap)
    parsed = ParsedEvents(args.parser, args.events, masker)
    try:
        child = subprocess.Popen(
            args.command,
            stdin=subprocess.DEVNULL if not sys.stdin.isatty() else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        log.write(f"hal: cannot start {args.command[0]}: {exc.strerror}\n".encode())
        log.close()
        parsed.close(log.size)
        write_exit_status(args.exit_file, 127)
        return 127

    def forward(signum: int, _frame: FrameType | None) -> None:
        # The child runs in its own session so a terminal's signals reach it only through us.
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    assert child.stdout is not None
    final = False
    while not final:
        chunk = os.read(child.stdout.fileno(), 65536)
        final = not chunk
        raw = decoder.decode(chunk, final=final)
        text = stream.feed(raw) + (stream.flush() if final else "")
        if text:
            # The log first: parsed events name the log offset they are covered by.
            log.write(text.encode())
            _emit(text, sys.stdout)
        parsed.feed(raw, log.size)
        while parsed.problems:
            log.write(masker.mask(parsed.problems.pop(0)).encode())
    child.stdout.close()
    status = child.wait()
    if status < 0:
        status = 128 - status
    parsed.close(log.size)
    for problem in parsed.problems:
        log.write(masker.mask(problem).encode())
    log.close()
    write_exit_status(args.exit_file, status)
    return status


def _emit(text: str, sink: TextIO) -> None:
    try:
        sink.write(text)
        sink.flush()
    except (OSError, ValueError):
        # A closed terminal (detached tmux client gone) must not stop the log.
        pass


def main() -> None:
    """Entry point for ``python -m hal9999.process.supervisor``."""
    raise SystemExit(supervise(sys.argv[1:]))


if __name__ == "__main__":
    main()
