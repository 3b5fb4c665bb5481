"""Host-side renewal of a sandbox's own scratch directories, for a reset between tasks.

Whatever a task left in a directory the sandbox owns (``/tmp`` of a bwrap sandbox) is
hostile: modes that lock its owner out (000, 555), setuid files, FIFOs, links to host files.
Wiping it from inside does not work (the sandbox has no ``CAP_DAC_OVERRIDE``), so the host
moves the whole directory away with one ``rename`` (atomic: the next command sees either the
old directory or none), lets the provider create a fresh one, and deletes the old tree
through directory fds: never following a link, making each directory 700 before reading it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from hal9999.errors import ProviderError

RETIRED_PREFIX = ".retired-"
"""Name prefix of a directory moved away by :func:`retire`, waiting for :func:`remove_tree`."""
MAX_DEPTH = 200
"""Deeper trees are refused (each level holds a descriptor); the caller destroys instead."""


def retire(parent: Path, name: str) -> Path | None:
    """Rename ``parent/name`` to a unique hidden name in ``parent``; None when it is absent.

    A rename never follows ``name`` if it is a link, and stays on one filesystem.
    """
    retired = parent / f"{RETIRED_PREFIX}{name}-{secrets.token_hex(4)}"
    try:
        os.rename(parent / name, retired)
    except FileNotFoundError:
        return None
    return retired


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it without following a link; ProviderError when
    something cannot go (an immutable file, a tree deeper than :data:`MAX_DEPTH`)."""
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _remove(parent, path.name, 0)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ProviderError(f"cannot remove {path}: {exc}") from exc
    finally:
        os.close(parent)


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


def _remove(dir_fd: int, name: str, depth: int) -> None:
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(info.st_mode):
        if depth >= MAX_DEPTH:
            raise OSError(f"more than {MAX_DEPTH} nested directories")
        fd = _open_dir_for_removal(dir_fd, name)
        try:
            for child in os.listdir(fd):
                _remove(fd, child, depth + 1)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _open_dir_for_removal(dir_fd: int, name: str) -> int:
    # O_PATH needs no permission on the directory itself, so a mode-000 directory can still be
    # reached; chmod through its /proc/self/fd entry changes exactly the inode we hold (no
    # path to swap), and only then is it opened for reading.
    handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        own = f"/proc/self/fd/{handle}"
        os.chmod(own, 0o700)
        return os.open(own, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(handle)
