"""What a host git that failed while writing a pack into the source repository left there.

``index-pack`` (a fetch's) and ``pack-objects`` write a pack as ``tmp_pack_XXXXXX`` (with
``tmp_idx_``, ``tmp_rev_`` beside it) in ``objects/pack`` and rename it into place only once
it is whole. One that fails, on a full disk above all, leaves it there: hidden in the user's
``.git``, as large as what it managed to write, until a ``git gc`` two weeks later. On the
repository's full disk that is the space the user's own next ``git status`` needed (found:
a result too large for the source's filesystem left it 100 % full). So when hal's write into
the source fails, the temporary files of that write are removed: those made since it began
that no process holds open (a concurrent git of the user's holds its own open while writing).

A hal killed during such a write (``SIGKILL``, a power cut) removes nothing: each write is
marked by a file :data:`MARKER` ``<random>`` in the object directory, created before git
starts and ``flock``-ed while it runs, removed after. The next write into that repository
(:func:`leftovers_cleared`) takes the lock of every marker it finds: one it gets belongs to a
hal that died (the kernel drops a dead process's locks); the temporary files of that write
(made since the marker, of this user, regular files, held open by no process) are removed
once none changed in the last :data:`SETTLED` seconds, and the marker with them. A
``tmp_pack_`` of the user's own git that is still open, or was changed lately (git closes a
finished pack a moment before it renames it), stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from pathlib import Path

TEMPORARY = ("tmp_pack_", "tmp_idx_", "tmp_rev_", "tmp_mtimes_")
"""The names git gives a pack's files while it writes them (``odb_mkstemp``)."""
MARKER = "hal-packing-"
"""In the source's object directory (where git looks for nothing but its hex directories,
``pack`` and ``info``): the prefix of the file that marks one of hal's writes."""
SETTLED = 60.0
"""A dead hal's temporary file is removed only once none of its write's changed for this long."""


class Mark:
    """One of hal's writes into an object directory, marked (:data:`MARKER`) and locked."""

    __slots__ = ("began", "fd", "path")

    def __init__(self, objects: Path) -> None:
        """Remove the leftovers of dead hals' writes into ``objects``, then mark this one."""
        leftovers_cleared(objects)
        self.path = objects / f"{MARKER}{secrets.token_hex(8)}"
        self.began = time.time()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(self.path, flags, 0o600)
        except OSError:  # a directory hal may not write in: git fails there, and says why
            self.fd = -1
            return
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.began = os.fstat(self.fd).st_mtime

    def end(self) -> None:
        """The write is over (what it left, if it failed, already removed): unmark it."""
        if self.fd == -1:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)


def leftovers_cleared(objects: Path) -> list[str]:
    """Remove what dead hals' writes into ``objects`` left (the module says which files);
    their names."""
    try:
        names = [n for n in os.listdir(objects) if n.startswith(MARKER)]
    except OSError:
        return []
    dropped: list[str] = []
    for name in names:
        try:
            fd = os.open(objects / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # gone, or a link
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            # Made a moment ago: maybe by a hal that has not locked it yet.
            if st.st_mtime > time.time() - SETTLED:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its hal is alive and writing
                continue
            gone, kept = _drop(objects / "pack", st.st_mtime, settled=SETTLED)
            dropped += gone
            if not kept:  # else a later write looks again
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(objects / name)
        finally:
            os.close(fd)
    return dropped


def drop_partial_packs(pack_dir: Path, since: float) -> list[str]:
    """Remove git's temporary pack files in ``pack_dir`` changed at or after ``since`` (less a
    second: a filesystem's coarse clock), owned by this process's user, that no process
    holds open; their names."""
    return _drop(pack_dir, since, settled=0.0)[0]


def _drop(pack_dir: Path, since: float, settled: float) -> tuple[list[str], bool]:
    """:func:`drop_partial_packs`, leaving files changed in the last ``settled`` seconds; the
    names removed, and whether any file of the window was left (changed lately, held open)."""
    candidates: dict[tuple[int, int], str] = {}
    young = False
    recent = time.time() - settled
    try:
        names = os.listdir(pack_dir)
    except OSError:
        return [], False
    for name in names:
        if not name.startswith(TEMPORARY):
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(pack_dir / name)
            # Only hal's own: another user's git (a shared repository) may hold its open
            # where this process cannot look (its /proc/PID/fd is not ours to read).
            if st.st_mtime < since - 1 or st.st_uid != os.geteuid():
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if settled and st.st_mtime > recent:
                young = True
                continue
            candidates[(st.st_dev, st.st_ino)] = name
    for key in _held_open(candidates):
        del candidates[key]
        young = True
    dropped = []
    for name in candidates.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pack_dir / name)
            dropped.append(name)
    return dropped, young


def _held_open(files: dict[tuple[int, int], str]) -> set[tuple[int, int]]:
    """Which of ``files`` (by device and inode) some process this one may look at holds open."""
    held: set[tuple[int, int]] = set()
    if not files:
        return held
    names = set(files.values())
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fds = f"/proc/{pid}/fd"
        try:
            entries = os.listdir(fds)
        except OSError:  # gone, or not ours to read
            continue
        for fd in entries:
            try:
                if os.path.basename(os.readlink(f"{fds}/{fd}")) not in names:
                    continue
                st = os.stat(f"{fds}/{fd}")
            except OSError:
                continue
            held.add((st.st_dev, st.st_ino))
    return held
