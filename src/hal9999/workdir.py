"""The directory hal runs in, light (no pydantic): :mod:`hal9999.config` re-exports these, and
the thin ``hal run`` client (:mod:`hal9999.cli.daemon_run`) uses them without the config."""

from __future__ import annotations

from pathlib import Path

from hal9999.errors import UsageError


def current_dir() -> Path | None:
    """The current directory, or ``None`` when it was deleted (or is unreadable)."""
    try:
        return Path.cwd()
    except OSError:
        return None


def working_dir(repo: str | None) -> Path:
    """The directory ``--repo`` is relative to; a deleted one is a :class:`UsageError`
    unless ``repo`` needs none (an absolute path or a URL)."""
    here = current_dir()
    if here is not None:
        return here
    if repo and (Path(repo).is_absolute() or "://" in repo or "@" in repo):
        return Path("/")
    raise UsageError(
        "the current directory no longer exists",
        hint="cd to an existing directory, or pass --repo with an absolute path or a URL",
    )
