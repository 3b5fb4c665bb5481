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
    async with asyncio.timeout(60):  # a lock left held would never come: generous bound
        async with flock.held(path, poll=0.01):
            pass


async def test_holders_in_one_process_are_handed_the_lock_without_polling(tmp_path: Path) -> None:
    # A poll far longer than the test may take: only a hand-over lets the waiters in.
    path = tmp_path / "lock"
    order: list[str] = []
    first_in = asyncio.Event()

    async def hold(name: str) -> None:
        async with flock.held(path, poll=600):
            order.append(name)
            first_in.set()
            await asyncio.sleep(0.01)

    first = asyncio.create_task(hold("a"))
    await first_in.wait()
    async with asyncio.timeout(30):
        await asyncio.gather(first, *(hold(name) for name in "bcd"))
    assert order == ["a", "b", "c", "d"]  # in the order they came


def test_each_event_loop_has_its_own_queue(tmp_path: Path) -> None:
    path = tmp_path / "lock"

    async def once() -> None:
        async with flock.held(path, poll=0.01):
            pass

    asyncio.run(once())
    asyncio.run(once())  # a lock of the first loop would refuse to serve the second
