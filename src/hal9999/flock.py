"""An exclusive ``flock`` held across awaits, between processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path


@contextlib.asynccontextmanager
async def held(path: Path, *, poll: float) -> AsyncIterator[None]:
    """Hold the lock on ``path`` (made, mode 600, when missing). The wait polls every
    ``poll`` seconds, so it never blocks the event loop, and a wait that is cancelled
    leaves nothing held (closing the file releases the lock)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)
