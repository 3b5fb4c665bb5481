"""A relay's own stdin into an asyncio queue or stream (the ssh, ray and kubernetes relays)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator


def feed_stdin(loop: asyncio.AbstractEventLoop, feed: asyncio.Queue[bytes]) -> None:
    """Our stdin into ``feed``, by a daemon thread: it may be a file the event loop cannot
    watch, and a blocked read must not hold the exit. An empty chunk is the end."""

    def read() -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            try:
                loop.call_soon_threadsafe(feed.put_nowait, data)
            except RuntimeError:  # the relay is ending; its loop is closed
                return
            if not data:
                return

    threading.Thread(target=read, daemon=True).start()


async def stdin_chunks() -> AsyncIterator[bytes]:
    """Our stdin as it comes (see :func:`feed_stdin`), up to its end."""
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    feed_stdin(asyncio.get_running_loop(), chunks)
    while data := await chunks.get():
        yield data
