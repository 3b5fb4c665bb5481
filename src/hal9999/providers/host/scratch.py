"""Host-side renewal of a sandbox's own scratch directories, for a reset between tasks.

Whatever a task left in a directory the sandbox owns (``/tmp`` of a bwrap sandbox) is
hostile: modes that lock its owner out (000, 555), setuid files, FIFOs, links to host files.
Wiping it from inside does not work (the sandbox has no ``CAP_DAC_OVERRIDE``), so the host
moves the whole directory away with one ``rename`` (atomic: the next command sees either the
old directory or none), lets the provider create a fresh one, and deletes the old tree
through directory fds (:func:`hal9999.agentfs.remove_tree`): never following a link, opening up
each directory hal owns that it cannot enter.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from hal9999 import agentfs, fs
from hal9999.errors import ProviderError, UnsafePath

RETIRED_PREFIX = ".retired-"
"""Name prefix of a directory moved away by :func:`retire`, waiting for :func:`remove_tree`."""


Stamp = tuple[int, ...]
"""What :func:`stamp` reads of a directory."""


def stamp(path: Path) -> Stamp | None:
    """Device, inode, mode, owner, links and times of ``path`` itself (not followed); None
    when it cannot be read. Taken of an own directory right after it is made fresh, it tells
    :func:`untouched` whether anything changed it since: every change to a directory's
    entries moves its mtime and ctime, and every change to its mode, owner, times, flags,
    extended attributes or ACLs moves its ctime, which no unprivileged call can set."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (
        st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_nlink,
        st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns,
    )  # fmt: skip


def untouched(path: Path, fresh: Stamp | None) -> bool:
    """Whether ``path`` is the directory stamped ``fresh`` and nothing changed it: same
    stamp, still empty, no extended attribute (an ACL is one). A reset keeps such a
    directory instead of swapping it (a directory made and one freed a task)."""
    if fresh is None or stamp(path) != fresh:
        return False
    try:
        return not os.listdir(path) and not os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False


def retire(parent: Path, name: str) -> Path | None:
    """Rename ``parent/name`` to a unique hidden name in ``parent``; None when it is absent.

    A rename never follows ``name`` if it is a link, and stays on one filesystem.
    """
    retired = parent / f"{RETIRED_PREFIX}{name}-{secrets.token_hex(4)}"
    try:
        fs.replace(parent / name, retired)
    except FileNotFoundError:
        return None
    return retired


def remove_trees(paths: Sequence[Path]) -> None:
    """:func:`remove_tree` of each of ``paths`` in turn (one thread hop for a reset's)."""
    for path in paths:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it without following a link, at any depth
    (:func:`hal9999.agentfs.remove_tree`); ProviderError when something cannot go (an
    immutable file)."""
    try:
        agentfs.remove_tree(path)
    except UnsafePath as exc:
        raise ProviderError(exc.message) from exc


def holds_no_files(path: Path) -> bool:
    """Whether ``path`` is a real directory with nothing below it but real directories (what a
    provider creates fresh): no file, link, FIFO or socket anywhere in the tree."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    pending = [path]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    return False
                pending.append(Path(entry.path))
    return True
