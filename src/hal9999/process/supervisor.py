"""The process supervisor: runs one command, masks its output into a log, records its exit.

Both process managers run the agent under this small program (``python -m
hal9999.process.supervisor``) so that output handling is the same whether the agent lives in a
tmux pane or is a plain child: output is copied to the terminal (what ``hal task attach``
shows) and appended to the log, with every secret masked in both; when the command ends its
exit status is written atomically to the exit file, which survives the ``hal`` process that
started the run.

The names of the secret variables come in ``--mask-var`` options; their values are read from
this process's own environment, never from argv.
"""

from __future__ import annotations

import argparse
import codecs
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import TextIO

from hal9999.redact import SecretMasker, StreamMasker


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
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("a command is required after --")
    return args


def supervise(argv: list[str]) -> int:
    """Run the command described by ``argv``; return its exit status."""
    args = _parse(argv)
    masker = SecretMasker()
    for name in args.mask_var:
        value = os.environ.get(name)
        if value:
            masker.add(value)
    stream = StreamMasker(masker)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log = os.fdopen(fd, "w", encoding="utf-8")
    try:
        child = subprocess.Popen(
            args.command,
            stdin=subprocess.DEVNULL if not sys.stdin.isatty() else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        message = f"hal: cannot start {args.command[0]}: {exc.strerror}\n"
        log.write(message)
        log.close()
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

    out = sys.stdout
    assert child.stdout is not None
    while True:
        chunk = os.read(child.stdout.fileno(), 65536)
        if not chunk:
            break
        text = stream.feed(decoder.decode(chunk))
        if text:
            _emit(text, log, out)
    tail = stream.feed(decoder.decode(b"", final=True)) + stream.flush()
    if tail:
        _emit(tail, log, out)
    status = child.wait()
    if status < 0:
        status = 128 - status
    log.close()
    write_exit_status(args.exit_file, status)
    return status


def _emit(text: str, *sinks: TextIO) -> None:
    for sink in sinks:
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
