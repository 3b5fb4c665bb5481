"""What a host git that failed while writing a pack into the source repository left there.

``index-pack`` (a fetch's) and ``pack-objects`` write a pack as ``tmp_pack_XXXXXX`` (with
``tmp_idx_``, ``tmp_rev_`` beside it) in ``objects/pack`` and rename it into place only once
it is whole. One that fails, on a full disk above all, leaves it there: hidden in the user's
``.git``, as large as what it managed to write, until a ``git gc`` two weeks later. On the
repository's full disk that is the space the user's own next ``git status`` needed (found:
a result too large for the source's filesystem left it 100 % full). So when hal's write into
the source fails, the temporary files of that write are removed: those made since it began
that no process holds open (a concurrent git of the user's holds its own open while writing).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TEMPORARY = ("tmp_pack_", "tmp_idx_", "tmp_rev_", "tmp_mtimes_")
"""The names git gives a pack's files while it writes them (``odb_mkstemp``)."""


def drop_partial_packs(pack_dir: Path, since: float) -> list[str]:
    """Remove git's temporary pack files in ``pack_dir`` changed at or after ``since`` (less a
    second: a filesystem's coarse clock), owned by this process's user, that no process
    holds open; their names."""
    candidates: dict[tuple[int, int], str] = {}
    try:
        names = os.listdir(pack_dir)
    except OSError:
        return []
    for name in names:
        if not name.startswith(TEMPORARY):
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(pack_dir / name)
            # Only hal's own: another user's git (a shared repository) may hold its open
            # where this process cannot look (its /proc/PID/fd is not ours to read).
            if st.st_mtime >= since - 1 and st.st_uid == os.geteuid():
                candidates[(st.st_dev, st.st_ino)] = name
    for key in _held_open(candidates):
        del candidates[key]
    dropped = []
    for name in candidates.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pack_dir / name)
            dropped.append(name)
    return dropped


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
