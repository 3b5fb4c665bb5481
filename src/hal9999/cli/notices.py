"""What ``hal run`` tells the user before a task starts: config and what is left out.

Light at import (the thin ``hal run`` client prints the uncommitted-changes line too)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hal9999.workdir import current_dir

if TYPE_CHECKING:
    from hal9999.config import ConfigSources
    from hal9999.store import TaskRecord
    from hal9999.tasks.service import TaskService

_URL_PREFIXES = ("http://", "https://", "ssh://", "git://", "file://", "git@")


def print_notices(sources: ConfigSources, repo: str | None, ref: str | None) -> None:
    """One stderr line each: which config applied, what of ./hal.toml was ignored, and the
    uncommitted changes a task started from HEAD leaves out."""
    if sources.files:
        click.echo(f"hal: {sources.describe()}", err=True)
    notice = sources.project.notice() if sources.project else None
    if notice:
        click.echo(f"hal: note: {notice}", err=True)
    print_uncommitted(repo, ref)


def print_uncommitted(repo: str | None, ref: str | None) -> None:
    """The line saying what a task started from HEAD leaves out, if anything."""
    if ref is None:
        left_out = uncommitted_notice(repo)
        if left_out:
            click.echo(f"hal: note: {left_out}", err=True)


def record_config_sources(service: TaskService, task: TaskRecord, sources: ConfigSources) -> None:
    """Put which config applied, and what of ./hal.toml was ignored, in the task's events
    (``hal task events --json`` shows them; the line on stderr is only for a person)."""
    from hal9999.events.models import Message

    notice = sources.project.notice() if sources.project else None
    with service.events(task) as log:
        log.emit(Message(level="info", text=sources.describe()))
        if notice:
            log.emit(Message(level="warning", text=notice))


def uncommitted_notice(repo: str | None) -> str | None:
    """A line saying the task starts from HEAD without N uncommitted changes, or ``None``."""
    if repo and repo.startswith(_URL_PREFIXES):
        return None
    here = current_dir()
    if here is None and not (repo and Path(repo).is_absolute()):
        return None
    path = Path(repo) if repo and Path(repo).is_absolute() else (here or Path("/")) / (repo or "")
    try:
        if not path.is_dir():
            return None  # resolve_source says what is wrong with it
    except OSError:
        return None  # a name too long, say: resolve_source says so
    try:
        # Host git on the user's own checkout, with nothing of it run: no hooks, no fsmonitor.
        out = subprocess.run(
            ["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
             "status", "--porcelain", "--untracked-files=normal"],
            cwd=path, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    changes = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not changes:
        return None
    return (
        f"the task starts from the last commit (HEAD); {len(changes)} uncommitted change(s) "
        f"in {path} are left out (commit or stash them first to include them)"
    )
