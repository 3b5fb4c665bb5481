"""What ``hal run`` tells the user before a task starts: config and what is left out.

Light at import (the thin ``hal run`` client prints the uncommitted-changes line too)."""

from __future__ import annotations

import os
import time

from hal9999.cli.echo import echo
from hal9999.hostchild import HostChild
from hal9999.workdir import current_path, pure_path

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from hal9999.config import ConfigSources

_URL_PREFIXES = ("http://", "https://", "ssh://", "git://", "file://", "git@")


def print_notices(
    sources: ConfigSources, repo: str | None, ref: str | None, pending: Uncommitted | None = None
) -> None:
    """One stderr line each: which config applied, what of ./hal.toml was ignored, and the
    uncommitted changes a task started from HEAD leaves out (``pending``: the check
    :func:`start_uncommitted` started)."""
    if sources.files:
        echo(f"hal: {sources.describe()}", err=True)
    notice = sources.project.notice() if sources.project else None
    if notice:
        echo(f"hal: note: {notice}", err=True)
    print_uncommitted(repo, ref, pending)


def print_uncommitted(
    repo: str | None, ref: str | None, pending: Uncommitted | None = None,
    issue: str | None = None,
) -> None:  # fmt: skip
    """The line saying what a task started from HEAD leaves out, if anything."""
    if ref is None:
        left_out = (pending or start_uncommitted(repo, ref, issue)).notice()
        if left_out:
            echo(f"hal: note: {left_out}", err=True)


def uncommitted_notice(repo: str | None) -> str | None:
    """A line saying the task starts from HEAD without N uncommitted changes, or ``None``."""
    return start_uncommitted(repo, None).notice()


STATUS_TIMEOUT_S = 10.0
"""How long the host ``git status`` may take before the line is left out."""
READ_S = 1.0
"""How long reading the output of a ``git status`` that has ended may take."""


class Uncommitted:
    """The host ``git status`` of the repository a task starts from, started early: the
    full ``hal run`` imports the config and the task service meanwhile,
    and the line is printed where it always was."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.deadline = time.monotonic() + STATUS_TIMEOUT_S
        self.proc: HostGit | None = None
        if path is None:
            return
        try:
            # Host git on the user's own checkout, with nothing of it run: no hooks, no fsmonitor.
            # --no-optional-locks: the index only read. A plain `status` holds index.lock while
            # it compares (to write the refreshed index after), and this check is SIGKILLed
            # when late or not wanted (`stop`): the lock would stay, failing the user's git.
            self.proc = HostGit(
                ["--no-optional-locks", "-c", "core.fsmonitor=false", "-c",
                 "core.hooksPath=/dev/null", "status", "--porcelain", "--untracked-files=normal"],
                cwd=path,
            )  # fmt: skip
        except OSError:
            self.proc = None

    def notice(self) -> str | None:
        """The line, or ``None`` (nothing left out, or git could not tell)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        timeout = self.deadline - time.monotonic()
        if proc.poll() is not None:
            # git ended in time: only its output is left to read, however long hal itself
            # took to get here (a loaded machine: the line was dropped though git was done).
            timeout = max(timeout, READ_S)
        out = proc.communicate(timeout=max(0.0, timeout))
        if out is None:
            proc.stop()
            return None
        changes = [line for line in out.splitlines() if line.strip()]
        if proc.returncode != 0 or not changes:
            return None
        return (
            f"the task starts from the last commit (HEAD); {len(changes)} uncommitted change(s) "
            f"in {self.path} are left out (commit or stash them first to include them)"
        )

    def close(self) -> None:
        """Stop the check if its line is not wanted any more (the command failed first)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.stop()


class HostGit(HostChild):
    """``subprocess.Popen(["git", *args], cwd=cwd, stdout=PIPE, stderr=DEVNULL, text=True,
    errors="replace")``, as much of it as the check uses, without :mod:`subprocess`: with
    its ``signal``, ``threading``, ``selectors`` and ``locale`` (and their ``re`` and
    ``enum``) would be a large share of the thin ``hal run``'s start. Started as a
    :class:`~hal9999.hostchild.HostChild` with this process's environment; ``git -C`` for
    the working directory (posix_spawn has none)."""

    def __init__(self, args: list[str], cwd: str) -> None:
        super().__init__("git", ["git", "-C", cwd, *args], os.environ)

    def communicate(self, timeout: float) -> str | None:
        """Its output, decoded as Popen's text mode does, once it ended; None when it has
        not within ``timeout`` seconds (as ``TimeoutExpired``)."""
        import io
        import select

        deadline = time.monotonic() + timeout
        assert self.stdout is not None
        chunks = []
        poller = select.poll()
        poller.register(self.stdout, select.POLLIN)
        while True:
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return None
            chunk = os.read(self.stdout, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        delay = 0.0005  # as Popen.wait(timeout): it closed its output, its end is near
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        os.close(self.stdout)
        self.stdout = None
        # Popen's TextIOWrapper: the locale's encoding, errors replaced, universal newlines.
        return io.TextIOWrapper(io.BytesIO(b"".join(chunks)), errors="replace").read()


def start_uncommitted(repo: str | None, ref: str | None, issue: str | None = None) -> Uncommitted:
    """Start the check of what a task started from HEAD of ``repo`` leaves out (nothing to
    check: a ``ref`` given, a URL, an ``issue``, whose repository is cloned, a path that is
    no directory)."""
    return Uncommitted(None if ref is not None or issue else _status_dir(repo))


def _status_dir(repo: str | None) -> str | None:
    # Strings, not pathlib (the thin `hal run` imports none): pure_path is PurePosixPath's.
    if repo and repo.startswith(_URL_PREFIXES):
        return None
    here = current_path()
    if here is None and not (repo and repo.startswith("/")):
        return None
    path = pure_path(repo) if repo and repo.startswith("/") else pure_path(here or "/", repo or "")
    if not os.path.isdir(path):  # False on any OSError too (a name too long, say)
        return None  # resolve_source says what is wrong with it
    return path
