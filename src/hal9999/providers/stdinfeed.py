"""A relay's own stdin into an asyncio queue (the ssh, ray and kubernetes relays)."""

from __future__ import annotations

import asyncio
import os
import threading


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
