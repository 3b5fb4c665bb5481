"""The directory hal runs in, light (no pydantic): :mod:`hal9999.config` re-exports these, and
the thin ``hal run`` client (:mod:`hal9999.cli.daemon_run`) uses them without the config.

The thin client works with paths as strings (:func:`pure_path`, :func:`current_path`,
:func:`working_path`): :mod:`pathlib`, with the ``urllib.parse``, ``ipaddress`` and
``fnmatch`` it imports, is a large share of its start.
"""

from __future__ import annotations

import os

from hal9999.envvars import is_text
from hal9999.errors import RepoError, UsageError

TYPE_CHECKING = False  # typing, pathlib: hal9999.lighttyping says why
if TYPE_CHECKING:
    from pathlib import Path


def pure_path(*parts: str) -> str:
    """``str(pathlib.PurePosixPath(*parts))``: the parts joined, a later absolute one
    starting afresh, empty and ``.`` components dropped, ``..`` kept, and a leading ``//``
    (exactly two) kept as POSIX allows."""
    root, names = "", list[str]()
    for part in parts:
        if part.startswith("/"):
            root = "//" if part.startswith("//") and not part.startswith("///") else "/"
            names = []
        names.extend(name for name in part.split("/") if name and name != ".")
    return root + "/".join(names) or "."


def current_path() -> str | None:
    """:func:`current_dir` as a string."""
    try:
        return pure_path(os.getcwd())
    except OSError:
        return None


def current_dir() -> Path | None:
    """The current directory, or ``None`` when it was deleted (or is unreadable)."""
    here = current_path()
    if here is None:
        return None
    from pathlib import Path

    return Path(here)


def working_path(repo: str | None) -> str:
    """:func:`working_dir` as a string."""
    here = current_path()
    if here is not None and is_text(here):
        return here
    if repo and (repo.startswith("/") or "://" in repo or "@" in repo):
        return "/"
    if here is not None:  # the daemon's API, the task's record, its events hold only text
        raise path_not_text(here)
    raise UsageError(
        "the current directory no longer exists",
        hint="cd to an existing directory, or pass --repo with an absolute path or a URL",
    )


def path_not_text(path: str) -> RepoError:
    """The error for a repository whose path holds bytes that are not UTF-8."""
    shown = os.fsencode(path).decode("utf-8", "backslashreplace")
    return RepoError(
        f"the repository's path is not UTF-8 text: {shown}",
        hint="rename the directories with non-UTF-8 names (hal records the path in the "
        "task's record and events)",
    )


def working_dir(repo: str | None) -> Path:
    """The directory ``--repo`` is relative to; a deleted one is a :class:`UsageError`
    unless ``repo`` needs none (an absolute path or a URL)."""
    from pathlib import Path

    return Path(working_path(repo))
