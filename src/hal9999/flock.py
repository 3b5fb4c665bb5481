"""An exclusive ``flock`` held across awaits, between processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
"""Per event loop and lock path: the queue of this process's own holders (see :func:`held`)."""


def _queue(path: Path) -> asyncio.Lock:
    locks = _queues.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(os.path.abspath(path), asyncio.Lock())


@contextlib.asynccontextmanager
async def held(path: Path, *, poll: float) -> AsyncIterator[None]:
    """Hold the lock on ``path`` (made, mode 600, when missing). The wait polls every
    ``poll`` seconds, so it never blocks the event loop, and a wait that is cancelled
    leaves nothing held (closing the file releases the lock).

    Holders in this process (one event loop) queue on an :class:`asyncio.Lock` first and
    each is handed the lock the moment the one before lets go; only another process's hold
    is polled for. Polled by each of them, a daemon's many tasks on one repository would wait far
    longer for its snapshot lock than the holds apart."""
    async with _queue(path):
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
