"""Secret masking for every sink hal writes to: logs, events, the store, the dashboard.

A :class:`SecretMasker` knows the secret values of a run (API keys forwarded into the
sandbox, tokens read from credential files) and replaces each occurrence with
``[REDACTED]``. Besides the raw value it registers the forms a secret commonly takes when a
program echoes it: JSON-escaped (Python's and JavaScript's way), percent-encoded (either
case, and JavaScript's way), base64 (standard and URL-safe,
at each of the three byte alignments, so a secret inside a longer encoded blob is found),
hex (either case) and reversed. Every form is also matched "spaced": up to two separator
characters (whitespace, ``.``, ``_``, ``:``, ``-``) between any two of its characters, which
covers ``s e c r e t``, ``od -An -tx1`` and ``xxd -p`` dumps and wrapped base64 (not a dump
with offset and ASCII columns, ``xxd`` or ``hexdump -C``: docs/security.md, item 10).
Where occurrences overlap the union of them is replaced, so no character of any secret
survives.

Output arrives in chunks that may split a secret; :class:`StreamMasker` holds back the few
characters that could be the start of one until the next chunk decides.

What counts as a secret is decided by the caller; :func:`forwarded_is_secret` is the rule for
values forwarded from the host environment (a name or a value that looks like a credential).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

M = TypeVar("M", bound="BaseModel")

REDACTED = "[REDACTED]"
"""What a masked secret is replaced with."""

MIN_SECRET_LEN = 4
"""Shorter values are ignored: masking them would shred ordinary text and hide nothing."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""Format of every log line hal writes."""

SECRET_NAME_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "AUTH", "CREDENTIAL")
"""A variable whose name contains one of these (any case) holds a secret."""

SEPARATORS = " \t\r\n._:-"
"""Characters a "spaced" form may carry between two characters of a secret."""

_MAX_GAP = 2
"""At most this many separators between two characters of a spaced form."""

_SEP_CLASS = "[" + re.escape(SEPARATORS) + "]{0," + str(_MAX_GAP) + "}"


def secret_like_name(name: str) -> bool:
    """Whether a variable name says it holds a secret (``API_KEY``, ``GH_TOKEN``, ...)."""
    upper = name.upper()
    return any(word in upper for word in SECRET_NAME_WORDS)


def high_entropy(value: str) -> bool:
    """Whether ``value`` looks like a generated token: long, one word, letters and digits,
    and at least 3.5 bits of Shannon entropy per character."""
    if len(value) < 16 or any(c.isspace() for c in value):
        return False
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return False
    counts = Counter(value)
    bits = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return bits >= 3.5


def forwarded_is_secret(name: str, value: str) -> bool:
    """The rule for a value forwarded from the host (``--env NAME``, ``forward_env``): it is
    masked when its name or its value looks like a credential."""
    return secret_like_name(name) or high_entropy(value)


def _b64_cores(raw: bytes) -> set[str]:
    """The base64 characters that depend only on ``raw``, for each of the three alignments
    ``raw`` can have inside a longer encoded blob (standard and URL-safe alphabets)."""
    forms: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        first = math.ceil(8 * offset / 6)
        last = (8 * (offset + len(raw))) // 6
        core = encoded[first:last]
        forms.add(core)
        forms.add(core.translate(str.maketrans("+/", "-_")))
    whole = base64.b64encode(raw).decode().rstrip("=")
    forms |= {whole, whole.translate(str.maketrans("+/", "-_"))}
    return forms


def _variants(secret: str) -> set[str]:
    """The raw secret and the encodings a program is likely to print it in."""
    raw = secret.encode()
    forms = {secret, secret[::-1], raw.hex(), raw.hex().upper()}
    # json.dumps escapes quotes, backslashes, control and non-ASCII characters; JavaScript's
    # JSON.stringify (the stream-json of Claude Code, Gemini CLI, opencode) keeps non-ASCII.
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    for quoted in (
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        urllib.parse.quote(secret, safe="!'()*"),  # JavaScript's encodeURIComponent
    ):
        forms.add(quoted)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted))
    forms |= _b64_cores(raw)
    return {form for form in forms if len(form) >= MIN_SECRET_LEN}


def _spaced_pattern(form: str) -> str:
    return _SEP_CLASS.join(re.escape(c) for c in form)


def _could_start(tail: str, form: str) -> bool:
    """Whether ``tail`` is the beginning of a spaced occurrence of ``form`` not yet complete."""
    if not tail or tail[0] != form[0]:
        return False
    # States (next char of form needed, separators used in the current gap).
    states = {(1, 0)}
    for ch in tail[1:]:
        nxt: set[tuple[int, int]] = set()
        for needed, gap in states:
            if needed >= len(form):
                continue
            if ch == form[needed]:
                nxt.add((needed + 1, 0))
            if ch in SEPARATORS and gap < _MAX_GAP:
                nxt.add((needed, gap + 1))
        if not nxt:
            return False
        states = nxt
    return any(needed < len(form) for needed, _ in states)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping ``[start, end)`` spans; touching spans stay apart."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class SecretMasker:
    """Replaces every registered secret (and its common encodings) with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []
        self._first_chars: frozenset[str] = frozenset()
        self._chars = ""
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Register a secret value; values shorter than ``MIN_SECRET_LEN`` are ignored."""
        if len(secret) < MIN_SECRET_LEN:
            return
        new = _variants(secret) - self._secrets
        if not new:
            return
        self._secrets |= new
        # Longest first, so a secret that contains another is found whole.
        self._ordered = sorted(self._secrets, key=lambda s: (-len(s), s))
        self._first_chars = frozenset(s[0] for s in self._secrets)
        self._chars = "".join(set("".join(self._secrets)) | set(SEPARATORS))
        self._pattern = re.compile("|".join(_spaced_pattern(s) for s in self._ordered))

    def __len__(self) -> int:
        return len(self._secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    @property
    def max_len(self) -> int:
        """Length of the longest possible occurrence, separators included (0 when empty)."""
        longest = len(self._ordered[0]) if self._ordered else 0
        return longest + _MAX_GAP * max(0, longest - 1)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Merged ``[start, end)`` spans of ``text`` covered by some secret."""
        if self._pattern is None:
            return []
        found: list[tuple[int, int]] = []
        pos = 0
        # search() from one past each match's start finds overlapping occurrences too.
        while (match := self._pattern.search(text, pos)) is not None:
            found.append(match.span())
            pos = match.start() + 1
        return _merge(found)

    def mask(self, text: str) -> str:
        """``text`` with every secret occurrence replaced by ``[REDACTED]``."""
        if not self._secrets or not text:
            return text
        spans = self.spans(text)
        if not spans:
            return text
        return _render(text, spans, 0, len(text), continued=False)

    def mask_obj(self, obj: Any) -> Any:
        """Mask every string inside dicts, lists and tuples (keys too); other values pass."""
        if not self._secrets:
            return obj
        if isinstance(obj, str):
            return self.mask(obj)
        if isinstance(obj, dict):
            return {self.mask_obj(k): self.mask_obj(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.mask_obj(item) for item in obj]
        if isinstance(obj, tuple):
            return tuple(self.mask_obj(item) for item in obj)
        return obj

    def mask_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """Mask a record's values at every depth, and the keys of nested objects; its own
        top-level keys are field names of hal's schema and stay."""
        if not self._secrets:
            return data
        return {key: self.mask_obj(value) for key, value in data.items()}

    def mask_model(self, model: M) -> M:
        """A copy of a pydantic record (an event) with its text masked field by field.

        Numbers and booleans are never touched. A field whose masked value the model
        refuses (a closed vocabulary such as a message level or a phase name, which hal
        sets and an agent cannot fill with a secret) keeps its value."""
        if not self._secrets:
            return model
        data = model.model_dump(mode="json")
        masked = self.mask_fields(data)
        if masked == data:
            return model
        cls = type(model)
        try:
            return cls.model_validate(masked)
        except ValueError:
            pass
        kept = dict(data)
        for key, value in masked.items():
            if value == data[key]:
                continue
            try:
                cls.model_validate({**kept, key: value})
            except ValueError:
                continue
            kept[key] = value
        return cls.model_validate(kept)

    def pending_start(self, text: str) -> int:
        """The earliest index whose tail of ``text`` may be the start of a secret.

        ``len(text)`` when no tail could still grow into a secret.
        """
        if not self._secrets:
            return len(text)
        lo = max(0, len(text) - self.max_len + 1)
        # An occurrence holds only its form's characters and separators: none that is still
        # open starts before the last other character (found by one C-level strip).
        lo += len(text[lo:].rstrip(self._chars))
        for start in range(lo, len(text)):
            if text[start] not in self._first_chars:
                continue
            tail = text[start:]
            if any(_could_start(tail, s) for s in self._ordered):
                return start
        return len(text)

    def stream(self) -> StreamMasker:
        """A fresh :class:`StreamMasker` over this masker's secrets."""
        return StreamMasker(self)


def _render(
    text: str, spans: list[tuple[int, int]], begin: int, end: int, *, continued: bool
) -> str:
    """``text[begin:end]`` with each span replaced by one marker.

    A span starting before ``begin`` when ``continued`` was already marked by earlier output.
    """
    out: list[str] = []
    pos = begin
    for start, stop in spans:
        if stop <= begin or start >= end:
            continue
        out.append(text[pos:start] if start > pos else "")
        if not (continued and start < begin):
            out.append(REDACTED)
        pos = stop
    out.append(text[pos:end] if end > pos else "")
    return "".join(out)


class StreamMasker:
    """Masks a text stream whose chunks may split a secret.

    Concatenating every :meth:`feed` result and the final :meth:`flush` gives the same text
    as masking the whole stream at once. At most ``max_len - 1`` characters are held back.
    """

    def __init__(self, masker: SecretMasker) -> None:
        self._masker = masker
        # _buf holds text not yet emitted, preceded by _done characters that were already
        # emitted as part of a redaction; they stay so a secret overlapping them is found.
        self._buf = ""
        self._done = 0

    def feed(self, chunk: str) -> str:
        """Consume a chunk; return the masked text that is safe to emit now."""
        if not chunk:
            return ""
        buf = self._buf + chunk
        spans = self._spans(buf)
        cut = self._masker.pending_start(buf)
        emit_to = cut
        for start, stop in spans:
            if start <= cut < stop:
                # The possible secret starts inside a redaction: emit the redaction whole,
                # keep its end as already-emitted context for the next chunk.
                emit_to = stop
                break
        out = _render(buf, spans, self._done, emit_to, continued=self._done > 0)
        self._buf = buf[cut:]
        self._done = max(0, emit_to - cut)
        return out

    def flush(self) -> str:
        """End of stream: return whatever was held back, masked."""
        buf, done = self._buf, self._done
        self._buf, self._done = "", 0
        if len(buf) <= done:
            return ""
        return _render(buf, self._spans(buf, done), done, len(buf), continued=done > 0)

    def _spans(self, buf: str, done: int | None = None) -> list[tuple[int, int]]:
        done = self._done if done is None else done
        spans = self._masker.spans(buf)
        return _merge([(0, done), *spans]) if done else spans


class MaskingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message and traceback."""

    def __init__(self, masker: SecretMasker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        if not self.masker:
            return True
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: logging reports it later, with msg and args printed.
            message = f"{record.msg} {record.args!r}"
        record.msg = self.masker.mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Format the traceback now so the formatter uses this masked copy.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.masker.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.masker.mask(record.stack_info)
        return True


_HAL_HANDLER_ATTR = "_hal9999_handler"


def configure_logging(
    masker: SecretMasker, level: int | str = logging.WARNING, file: Path | None = None
) -> list[logging.Handler]:
    """Install hal's log handlers (stderr, and ``file`` when given) on the root logger.

    Every handler carries a :class:`MaskingFilter`. Calling it again replaces the handlers
    of the previous call. Returns the handlers installed.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HAL_HANDLER_ATTR, False)]:
        root.removeHandler(old)
        old.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Create the file private before logging opens it: logs describe the user's work.
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handlers.append(logging.FileHandler(file, encoding="utf-8"))
    formatter = logging.Formatter(LOG_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(MaskingFilter(masker))
        setattr(handler, _HAL_HANDLER_ATTR, True)
        root.addHandler(handler)
    root.setLevel(level)
    return handlers


def masker_from_env(names: Iterable[str], environ: Mapping[str, str]) -> SecretMasker:
    """A masker holding the values of the named environment variables that are set."""
    masker = SecretMasker()
    for name in names:
        value = environ.get(name)
        if value:
            masker.add(value)
    return masker
