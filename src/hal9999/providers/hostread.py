"""Small host files read whole with one ``open``, ``read`` and ``close``.

For what hal reads on every command or for every host process (``/proc/<pid>/environ``,
cgroup counters, a sandbox's record): a buffered file object makes seven system calls
(``fstat``, ``ioctl``, ``lseek``, a second ``read``) where these three do.
"""

from __future__ import annotations

import os

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
