"""The last line of defence: an exception hal did not expect becomes one line and a file.

A traceback on the terminal is a bug report the user did not ask to read. The CLI prints one
line naming the error and the file that holds the traceback (private, secrets masked), and
exits 1 with code ``internal``.
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path

from hal9999.errors import InternalError

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|AUTH|CREDENTIAL", re.IGNORECASE)


def _mask(text: str, environ: Mapping[str, str]) -> str:
    for name, value in environ.items():
        if len(value) >= 4 and _SECRET_NAME.search(name):
            text = text.replace(value, "[REDACTED]")
    return text


def _log_dirs(environ: Mapping[str, str]) -> list[Path]:
    # The home's run directory when it already exists (the home itself may be what failed),
    # else the system's temporary directory.
    dirs: list[Path] = []
    home = environ.get("HAL_HOME")
    if home:
        try:
            dirs.append(Path(home).expanduser() / "run")
        except RuntimeError:  # ~user of no user: the crash may be about exactly that
            pass
    dirs.append(Path(tempfile.gettempdir()))
    return dirs


def write_crash_log(exc: BaseException, environ: Mapping[str, str]) -> Path | None:
    """Write ``exc``'s traceback to a new mode-600 file; its path, or None if none could be."""
    text = _mask("".join(traceback.format_exception(exc)), environ)
    for directory in _log_dirs(environ):
        if not os.path.isdir(directory):  # False on any OSError: this must never raise
            continue
        try:
            fd, name = tempfile.mkstemp(prefix="hal-crash-", suffix=".log", dir=directory)
        except OSError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
            out.write(text)
        return Path(name)
    return None


def internal_error(exc: BaseException, environ: Mapping[str, str]) -> InternalError:
    """The :class:`InternalError` to report for ``exc`` (its traceback written to a file)."""
    path = write_crash_log(exc, environ)
    first = _mask(str(exc), environ).strip().splitlines()
    what = f"{type(exc).__name__}: {first[0][:200]}" if first else type(exc).__name__
    where = f"the traceback is in {path}" if path else "no file could hold the traceback"
    return InternalError(
        f"internal error ({what}); {where}", hint="this is a bug in hal: please report it"
    )
