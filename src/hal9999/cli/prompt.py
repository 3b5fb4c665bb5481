"""Where ``hal run`` gets its prompt: the argument, ``-`` for stdin, or ``--prompt-file``."""

from __future__ import annotations

from hal9999.errors import UsageError

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

MAX_PROMPT_BYTES = 8 * 1024 * 1024
"""The largest prompt accepted: far above any model's context, small enough to hold."""

_HOW = 'hal run "PROMPT", hal run - < FILE, or hal run --prompt-file FILE'


def read_prompt(
    prompt: str | None, prompt_file: str | None, stdin: BinaryIO, *, optional: bool = False
) -> str:
    """The prompt text from exactly one source; bad or empty input is a :class:`UsageError`.
    ``optional`` (``--issue``, whose issue is the work): none given is ``""``."""
    if prompt is not None and prompt_file is not None:
        raise UsageError("the prompt is given twice (PROMPT and --prompt-file)", hint=_HOW)
    if prompt_file == "-" or (prompt_file is None and prompt == "-"):
        text = _decode(_bounded(stdin, "standard input"), "standard input")
    elif prompt_file is not None:
        from pathlib import Path  # here: a run from its argument imports no pathlib

        text = _decode(_read_file(Path(prompt_file)), f"--prompt-file {prompt_file}")
    elif prompt is None:
        if optional:
            return ""
        raise UsageError("no prompt given", hint=_HOW)
    else:
        text = prompt
        # Undecodable argv bytes arrive as surrogates; refuse them here, not when writing.
        _decode(text.encode("utf-8", "surrogateescape"), "the PROMPT argument")
    if not text.strip():
        raise UsageError("the prompt is empty", hint=_HOW)
    return text


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as source:
            return _bounded(source, f"--prompt-file {path}")
    except OSError as exc:
        raise UsageError(
            f"cannot read --prompt-file {path}: {exc.strerror or exc}",
            hint="pass a readable text file",
        ) from exc


def _bounded(source: BinaryIO, what: str) -> bytes:
    data = source.read(MAX_PROMPT_BYTES + 1)
    if len(data) > MAX_PROMPT_BYTES:
        raise UsageError(
            f"the prompt from {what} is larger than {MAX_PROMPT_BYTES // (1024 * 1024)} MiB",
            hint="shorten it, or put the material in the repository and point the prompt at it",
        )
    return data


def _decode(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} is not UTF-8 text", hint="convert it to UTF-8") from exc
    if "\0" in text:
        raise UsageError(f"{what} contains a NUL byte", hint="pass text, not a binary file")
    return text
