"""Small host files read whole with one ``open``, ``read`` and ``close``, and written only
when their contents change.

For what hal reads on every command or for every host process (``/proc/<pid>/environ``,
cgroup counters, a sandbox's record): a buffered file object makes seven system calls
(``fstat``, ``ioctl``, ``lseek``, a second ``read``) where these three do. A sandbox's own
host-made files are prepared again on every start (each pool reset): most are unchanged.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

CHUNK = 65536
"""One read; a longer file takes more."""


def read_all(path: str) -> bytes:
    """The whole file at ``path``; OSError as ``open`` raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, CHUNK)
        if len(data) < CHUNK:
            # procfs, cgroupfs and regular files fill a read as far as they can: a short
            # one is the end.
            return data
        chunks = [data]
        while chunk := os.read(fd, CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _holds(path: Path, data: bytes, mode: int) -> os.stat_result | None:
    """The ``lstat`` of ``path`` when it is a regular file of ours holding exactly ``data``
    with ``mode``, else None."""
    with contextlib.suppress(OSError):
        st = os.stat(path, follow_symlinks=False)
        if (
            stat.S_ISREG(st.st_mode)
            and stat.S_IMODE(st.st_mode) == mode
            and st.st_uid == os.geteuid()
            and read_all(str(path)) == data
        ):
            return st
    return None


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``path`` holding exactly ``data`` with ``mode``, as a file of ours: left alone when it
    already is, else written atomically (a temporary file renamed over it)."""
    if _holds(path, data, mode) is None:
        _write_new(path, data, mode, path.with_name(f".{path.name}.tmp"))


def _write_new(path: Path, data: bytes, mode: int, tmp: Path) -> None:
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def link_shared(shared: Path, target: Path, data: bytes, mode: int = 0o444) -> None:
    """``target`` holding exactly ``data`` with ``mode``, as a file of ours: left alone when it
    already is, else made a hard link to ``shared`` (written first when it does not hold
    that): one file whose names are many sandboxes' own files, since a link makes no inode
    and each new inode costs up to 0.5 ms on some hosts (issue 16). A copy of its own where
    the filesystem refuses the link. ``shared`` is replaced, never changed in place, so
    links made earlier keep what they held."""
    if _holds(target, data, mode) is not None:
        return
    if _holds(shared, data, mode) is None:
        # A unique name: other threads and hal processes may be writing it too.
        tmp = shared.with_name(f".{shared.name}.{os.urandom(6).hex()}.tmp")
        shared.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _write_new(shared, data, mode, tmp)
    try:
        os.link(shared, target)  # a new sandbox: nothing there yet
        return
    except FileExistsError:
        pass  # a stale or changed file: replaced by a link below
    except OSError:
        write_if_changed(target, data, mode)
        return
    tmp = target.with_name(f".{target.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.link(shared, tmp)
    os.replace(tmp, target)
