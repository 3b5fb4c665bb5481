"""Counting the inodes hal creates under a directory (on some hosts each new inode
is far dearer than a link or rename), so a test can pin a path's count; and the
files it opens there (:func:`opened`).

One process-wide audit hook (``sys.addaudithook`` cannot be removed), live only inside
:func:`created`. It sees ``os.mkdir``, ``os.symlink`` and every ``open`` with ``O_CREAT`` of a
path that does not exist yet in a directory that does, from every thread (a path made,
removed or renamed, and made again counts twice); not ``os.mkfifo`` (no audit event) nor what
child processes make.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_active: list[tuple[str, list[str]]] = []
_opening: list[tuple[str, list[str]]] = []
_buffered: list[tuple[str, list[str]]] = []
_lock = threading.Lock()
_installed = False


def _absolute(path: object, dir_fd: object) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        return None
    name = os.fspath(path)
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(name):
        return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
    return os.path.abspath(name)


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and (_opening or _buffered):
        path = _absolute(args[0], None)
        _note(_opening, path)
        if isinstance(args[1], str):  # a mode: ``open``'s file object, not ``os.open``
            _note(_buffered, path)
    if not _active:
        return
    if event == "open":
        flags = args[2]
        if not isinstance(flags, int) or not flags & os.O_CREAT:
            return
        path = _absolute(args[0], None)
    elif event == "os.mkdir":
        path = _absolute(args[0], args[2])
    elif event == "os.symlink":
        path = _absolute(args[1], args[2])
    else:
        return
    # Not there yet, in a directory that is (``mkdir(parents=True)`` tries first and fails).
    if path is None or os.path.lexists(path) or not os.path.isdir(os.path.dirname(path)):
        return
    _note(_active, path)


def _note(watched: list[tuple[str, list[str]]], path: str | None) -> None:
    if path is None or not watched:
        return
    with _lock:
        for root, found in watched:
            if path == root or path.startswith(root + os.sep):
                found.append(os.path.relpath(path, root))


@contextmanager
def created(root: Path) -> Iterator[list[str]]:
    """The paths (relative to ``root``) of the inodes made under ``root`` inside the block."""
    with _watching(_active, root) as found:
        yield found


@contextmanager
def opened(root: Path) -> Iterator[list[str]]:
    """The paths (relative to ``root``) of every ``open`` under ``root`` inside the block, one
    entry an open (read, written or made; by ``open``, ``Path.open`` or ``os.open``)."""
    with _watching(_opening, root) as found:
        yield found


@contextmanager
def buffered_opens(root: Path) -> Iterator[list[str]]:
    """As :func:`opened`, only the opens that make a file object (``open``, ``Path.open``,
    ``Path.read_text``...: each an ``fstat``, an ``ioctl`` and ``lseek``s more than
    ``os.open``'s, and the objects)."""
    with _watching(_buffered, root) as found:
        yield found


@contextmanager
def _watching(watched: list[tuple[str, list[str]]], root: Path) -> Iterator[list[str]]:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    entry: tuple[str, list[str]] = (os.path.realpath(root), [])
    with _lock:
        watched.append(entry)
    try:
        yield entry[1]
    finally:
        with _lock:
            watched.remove(entry)


def steady(paths: list[str]) -> list[str]:
    """``paths`` sorted, each random part of an atomic write's temp name (``fs.temp_beside``:
    ``.<name>.<12 hex digits>.hal-tmp``) written ``<tmp>``, so a test can name them."""
    import re

    return sorted(re.sub(r"\.[0-9a-f]{12}\.hal-tmp$", ".<tmp>", path) for path in paths)
