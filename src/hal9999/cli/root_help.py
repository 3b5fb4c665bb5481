"""``hal --help`` (and ``hal -h``) without click: the text click prints, from the command table.

Click and what it imports (``typing``, ``inspect``, ``ast``, ``datetime``, ``uuid``,
``shutil`` with its compressors...) were ~65 of the ~120 modules of a ``hal --help`` and
nearly all of its start-up over a bare interpreter (the target for
``hal --help`` is in docs/benchmarks.md). This module
lays out the same page click's ``HelpFormatter`` does for the root group of
:mod:`hal9999.cli.main`, with the lazy group's command list (:mod:`hal9999.cli.lazy`):
the width from the terminal as ``shutil.get_terminal_size`` finds it, each command's
short help shortened by click's rule. ``tests/cli/test_root_help.py`` compares it with
click's page at every width; any other argument list goes to click as before.
"""

from __future__ import annotations

import os
import sys

from hal9999.cli.command_table import COMMANDS, HELP_OPTIONS, ROOT_HELP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

USAGE = "Usage: hal [OPTIONS] COMMAND [ARGS]..."
"""The root group's usage line (it fits the narrowest width click lays out, 50)."""
INDENT = 2
"""Click's indent of a section's body."""


def help_options() -> str:
    """The help option's names as click joins them: shorter prefixes first."""
    return ", ".join(sorted(HELP_OPTIONS, key=lambda name: len(name) - len(name.lstrip("-"))))


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` without importing :mod:`shutil` (it imports
    ``fnmatch`` and three compression modules): ``COLUMNS`` when it is a positive number,
    else the width of the terminal on standard output, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80
    return size.columns or 80


def formatter_width() -> int:
    """Click's ``HelpFormatter`` width: the terminal's, at most 80, less 2, at least 50."""
    return max(min(terminal_columns(), 80) - 2, 50)


def short_help(text: str, limit: int) -> str:
    """``click.Command(help=text).get_short_help_str(limit)``: the first sentence, whole if
    it fits, else shortened at a word with ``...``."""
    words = text.partition("\n\n")[0].split()
    if words and words[0] == "\b":
        words = words[1:]
    if not words:
        return ""
    last = len(words) - 1
    for i, word in enumerate(words):  # a period ends a sentence unless a lowercase word follows
        if word.endswith(".") and (i == last or not words[i + 1][0].islower()):
            words = words[: i + 1]
            break
    joined = " ".join(words)
    if len(joined) <= limit:
        return joined.strip()
    if limit < len("..."):
        return "..."
    return shorten(joined, limit)


def shorten(text: str, limit: int) -> str:
    """``textwrap.shorten(text, limit, placeholder="...", break_on_hyphens=False)`` of a text
    longer than ``limit``: the words that fit with ``...`` after them. ``textwrap`` (with the
    ``re`` it imports and compiles) costs more than the rest of the page;
    it is imported only for a first word longer than the line, which it breaks."""
    words = text.split()
    kept: list[str] = []
    length = 0
    for word in words:
        if length + len(word) + bool(kept) > limit:
            break
        length += len(word) + bool(kept)
        kept.append(word)
    if not kept:
        import textwrap

        return textwrap.shorten(text, limit, placeholder="...", break_on_hyphens=False)
    while kept:  # drop words until the placeholder fits after the last one
        if length + len("...") <= limit:
            return " ".join(kept) + "..."
        length -= len(kept.pop()) + bool(kept)
    return "..."


def definitions(rows: Iterable[tuple[str, str]], width: int) -> list[str]:
    """Click's ``write_dl`` in a section (indent 2): terms, then their text wrapped."""
    rows = list(rows)
    first_col = min(max(len(term) for term, _ in rows), 30) + 2
    text_width = max(width - first_col - 2, 10)
    lines = []
    for term, text in rows:
        head = " " * INDENT + term
        if not text:
            lines.append(head)
            continue
        if len(term) <= first_col - 2:
            head += " " * (first_col - len(term))
        else:
            lines.append(head)
            head = " " * (first_col + INDENT)
        wrapped = wrap(text, text_width) or [""]
        lines.append(head + wrapped[0])
        lines.extend(" " * (first_col + INDENT) + line for line in wrapped[1:])
    return lines


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    """Click's ``wrap_text`` of one paragraph: whole when it fits, else ``textwrap``'s."""
    if len(indent) + len(text) <= width and "\n" not in text and "\t" not in text:
        return [indent + text]
    from textwrap import TextWrapper

    wrapper = TextWrapper(
        width, initial_indent=indent, subsequent_indent=indent, replace_whitespace=False
    )
    return wrapper.wrap(" ".join(text.expandtabs().splitlines()))


def render(width: int) -> str:
    """The page of ``hal --help`` at ``width`` (a ``HelpFormatter``'s), with its newline."""
    lines = [USAGE, "", *wrap(ROOT_HELP, width, " " * INDENT), "", "Options:"]
    options = [("--version", "Show the version and exit."),
               (help_options(), "Show this message and exit.")]  # fmt: skip
    lines += definitions(options, width)
    names = sorted(COMMANDS)
    limit = width - 6 - max(len(name) for name in names)  # as the lazy group counts
    shown = [(n, short_help(COMMANDS[n].short_help, limit))
             for n in names if not COMMANDS[n].hidden]  # fmt: skip
    if shown:
        lines += ["", "Commands:", *definitions(shown, width)]
    return "\n".join(lines).rstrip("\n") + "\n"


def print_help() -> None:
    """Print ``hal --help``'s page and exit 0, as click does: nothing and 0 with no standard
    output (closed), a reader that went away: status 1, quietly."""
    if sys.stdout is None:
        sys.exit(0)
    try:
        sys.stdout.write(render(formatter_width()))
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # /dev/full, a full disk
        from hal9999.cli.entry import failed

        failed(exc)
    sys.exit(0)
