"""Notes of a sandbox's steps that a killed hal leaves half done, for the next hal to undo.

A provider whose records are its sandboxes themselves (docker's containers, found by label)
has nothing that outlives a kill between allocating a sandbox's uid and making its container,
or between removing a container and making its replacement (a reset): the uid's lock file
stays, and the container is lost or half made. While such a step runs, a note
``<dir>/unfinished-<sandbox id>`` holds what it allocated (the uid), locked (``flock``) by
the process doing it. The lock goes with the process however it ends, so :func:`taken`
gives a note only when no live process holds it, hal's own included (a lock is per open
file): the caller undoes the step, then :meth:`Note.done`.

A note is written under a temporary name and renamed once locked, so no one sees it unlocked
while its process lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from hal9999 import fs

PREFIX = "unfinished-"
STALE_S = 3600
"""Age past which a temporary note (its hal killed before the rename) is removed: nothing
was allocated or done under it."""


class Note:
    """One step's note, locked by this process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def record(self, text: str) -> None:
        """Note what the step allocated (before anything is made with it)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def text(self) -> str:
        """What was noted."""
        return os.pread(self.fd, 4096, 0).decode(errors="replace")

    def done(self) -> None:
        """The step is finished (or undone): the note goes, still locked."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@contextlib.contextmanager
def noted(directory: Path, sandbox_id: str, text: str = "") -> Iterator[Note]:
    """A note of a step on ``sandbox_id``, saying ``text``, held while the body runs;
    removed when the body finishes, kept (unlocked) when it raises, for the caller (or the
    next hal, when this one is killed) to undo."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{PREFIX}{sandbox_id}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        note = Note(directory / f"{PREFIX}{sandbox_id}", fd)
        note.record(text)
        fs.replace(tmp, note.path)
        yield note
        note.done()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # failed before the rename: nothing noted
        raise
    finally:
        os.close(fd)


def pending(directory: Path) -> list[str]:
    """The sandbox ids with a note in ``directory`` (held by a live process or not); removes
    the temporary notes of hals killed before their rename."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(f".{PREFIX}") and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                if time.time() - (directory / name).lstat().st_mtime > STALE_S:
                    (directory / name).unlink()
    return [name.removeprefix(PREFIX) for name in names if name.startswith(PREFIX)]


@contextlib.contextmanager
def taken(directory: Path, sandbox_id: str) -> Iterator[Note | None]:
    """The note of ``sandbox_id``, locked, when it is there and no process holds it (else
    None)."""
    try:
        fd = os.open(directory / f"{PREFIX}{sandbox_id}", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        yield None  # none, or done meanwhile
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None  # its step is running
            return
        # Undone by another hal, or finished, between our open and our lock: nothing left.
        yield Note(directory / f"{PREFIX}{sandbox_id}", fd) if os.fstat(fd).st_nlink else None
    finally:
        os.close(fd)
