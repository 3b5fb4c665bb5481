"""``flock.held``: one holder at a time, and a cancelled wait holds nothing."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from hal9999 import flock


async def test_a_second_holder_waits_for_the_first(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    order: list[str] = []

    async def hold(name: str, seconds: float) -> None:
        async with flock.held(path, poll=0.01):
            order.append(f"{name} in")
            await asyncio.sleep(seconds)
            order.append(f"{name} out")

    first = asyncio.create_task(hold("a", 0.1))
    await asyncio.sleep(0.02)
    await asyncio.gather(first, hold("b", 0))
    assert order == ["a in", "a out", "b in", "b out"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_a_cancelled_wait_leaves_nothing_held(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's hold, as far as the lock goes
    waiter = asyncio.create_task(flock.held(path, poll=0.01).__aenter__())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    os.close(fd)
    async with asyncio.timeout(1):
        async with flock.held(path, poll=0.01):
            pass
