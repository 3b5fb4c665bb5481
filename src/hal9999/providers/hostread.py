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


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``path`` holding exactly ``data`` with ``mode``, as a file of ours: left alone when it
    already is, else written atomically (a temporary file renamed over it)."""
    with contextlib.suppress(OSError):
        st = os.stat(path, follow_symlinks=False)
        if (
            stat.S_ISREG(st.st_mode)
            and stat.S_IMODE(st.st_mode) == mode
            and st.st_uid == os.geteuid()
            and read_all(str(path)) == data
        ):
            return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
