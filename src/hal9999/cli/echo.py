"""What the CLI prints, without click: ``click.echo``'s output where it is plain, click's own
``echo`` otherwise.

The thin ``hal run`` through a running daemon (:mod:`hal9999.cli.run_argv`) does not import
click (click and what it imports would be a large share of the client's CPU on top of the
modules it shares, and its command tree more), yet prints through here exactly what
``click.echo`` would: for a real UTF-8 text stream and a line that needs no stripping of
terminal styles, ``click.echo`` writes the line and a newline and flushes, which is what
:func:`echo` does; any other stream or line goes to ``click.echo`` itself.
"""

from __future__ import annotations

import contextlib
import io
import sys

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from typing import Any, TextIO

    from hal9999.cli.output import TerminalSanitizer


def echo(text: str = "", *, err: bool = False) -> None:
    """``click.echo(text, err=err)``."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:
        return  # no stream to write to, as click
    if not _plain(stream, text):
        import click

        click.echo(text, err=err)
        return
    stream.write(text + "\n")
    stream.flush()


def _plain(stream: TextIO, text: str) -> bool:
    # click rewraps a stream whose encoding is ASCII (or missing) and strips ANSI styles
    # from a line bound for anything but a terminal; a plain TextIOWrapper in UTF-8 with a
    # line without ESC is written as it is.
    if type(stream) is not io.TextIOWrapper:
        return False
    if (stream.encoding or "").lower().replace("_", "-") not in ("utf-8", "utf8"):
        return False
    return "\x1b" not in text or stream.isatty()


def emit_json(data: Any) -> None:
    """Print one JSON document: strict JSON (a non-finite number, which older databases may
    hold, becomes null instead of the invalid ``Infinity``)."""
    import json

    echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def _finite(data: Any) -> Any:
    import math  # here: only --json's document needs it (a run's start does not)

    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data


_TERMINAL: TerminalSanitizer | None = None

STYLE_RESET = "\x1b[0m"


def after_agent_output() -> str:
    """The line between an agent's output and what hal says of the run: on a terminal, a
    reset of the styles (a conceal, black on black the agent left set hid the run's status,
    and its own "status succeeded" printed before stood in for it); else empty."""
    stdout = sys.stdout
    return STYLE_RESET if stdout is not None and stdout.isatty() else ""


def stream_to_terminal(text: str) -> None:
    """Echo agent output as it arrives, sanitised (colours kept; escape sequences that move
    the cursor, clear the screen, set the title or the clipboard dropped)."""
    global _TERMINAL
    from hal9999.cli.output import TerminalSanitizer

    if _TERMINAL is None:
        _TERMINAL = TerminalSanitizer()
    sys.stdout.write(_TERMINAL.feed(text))
    sys.stdout.flush()


def end_terminal_stream() -> None:
    """The end of what :func:`stream_to_terminal` printed: what it held back, sanitised, and
    a reset of a style the output left set."""
    if _TERMINAL is not None:
        sys.stdout.write(_TERMINAL.flush())
        sys.stdout.flush()


def to_devnull(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at /dev/null: its reader went away (``hal ... | head``),
    and what is left in its buffer, flushed at exit, must not fail once more."""
    import os

    with contextlib.suppress(OSError, ValueError):  # ValueError: a stream with no descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
