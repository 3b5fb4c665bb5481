"""Rotating a task's log and event files: the current file becomes ``<name>.1`` (an older
``.1`` is dropped) and a new one starts.

A hive agent's turns are runs of one long-lived task, so the per-run caps of its log and
events add up turn after turn; :mod:`hal9999.hive.agentfiles` rotates them between turns.
The event log's new file starts with a copy of the last event, so its ``seq`` goes on from
where it was for every writer (:func:`hal9999.events.log.recover` reads it back) and every
reader reads the rotated file, then the current one, dropping the repeated event by its
``seq`` (:mod:`hal9999.events.reader`). A follower sees the file replaced (a new inode) and
finishes the rotated one before it goes on in the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from hal9999 import fs
from hal9999.events.reader import lines_backwards, parse_line, rotated


def with_rotated(*paths: Path) -> list[Path]:
    """Each of ``paths`` and its rotated older file."""
    return [name for path in paths for name in (path, rotated(path))]


def size_of(path: Path) -> int:
    """Bytes of ``path`` (0 when it is missing)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def rotate_log(path: Path) -> None:
    """Move the output log ``path`` to :func:`rotated` (nothing writes it between runs)."""
    with contextlib.suppress(FileNotFoundError):
        fs.replace(path, rotated(path))


def rotate_events(path: Path) -> None:
    """Move the event log ``path`` to :func:`rotated`, under the log's own lock (writers in
    other processes wait), and start ``path`` anew with its last complete event. ``path``
    always exists meanwhile: the rotated name is linked first, then the new file renamed
    over ``path``."""
    try:
        file = path.open("r+b")
    except FileNotFoundError:
        return
    with file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        size = file.seek(0, os.SEEK_END)
        last = b""
        for line in lines_backwards(file, size):
            if line.strip() and parse_line(line, path, warn=False) is not None:
                last = line + b"\n"
                break
        fs.hardlink(path, rotated(path))
        fs.write_bytes(path, last)  # its rename fsyncs the directory: the link's too
