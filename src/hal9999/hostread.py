"""Small host files read whole with one ``open``, ``read`` and ``close``, written with one
``open``, ``write`` and ``close``, or written only when their contents change.

For what hal reads on every command or for every host process (``/proc/<pid>/environ``,
cgroup counters, a sandbox's record): a buffered file object makes seven system calls
(``fstat``, ``ioctl``, ``lseek``, a second ``read``) where these three do. The files a
provider's sandboxes share are checked on every create and start (each pool reset): they
are rewritten only when changed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from hal9999 import fs

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


def read_text(path: str | os.PathLike[str]) -> str:
    """The whole file at ``path`` as UTF-8 text (strict, as ``Path.read_text`` decodes it
    here, but no newline translation: a ``\r`` stays), by :func:`read_all`."""
    return read_all(os.fspath(path)).decode()


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (a pipe, or a regular file's ``write``, may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` as the whole of ``path`` in UTF-8, as ``Path.write_text`` writes it (made or
    emptied, mode 666 less the umask), without a buffered file's ``fstat``, ``ioctl``,
    ``lseek``s and objects."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        write_all(fd, text.encode())
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


def write_shared(path: Path, data: bytes, mode: int = 0o444) -> None:
    """``path`` holding exactly ``data`` with ``mode``, as a file of ours that many sandboxes
    name (bound or opened by path): left alone when it already is, else written under a
    unique temporary name and renamed over it, never changed in place (other threads and hal
    processes may be writing or reading it too)."""
    if _holds(path, data, mode) is not None:
        return
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fs.write_bytes(path, data, mode=mode, durable=False)
