"""How hal learns that a subprocess ended: a pidfd on the event loop that started it.

On Python 3.11 asyncio's default child watcher starts a thread per subprocess that blocks in
``waitpid`` (``ThreadedChildWatcher``); a task starts about nine subprocesses (git, sandbox
execs), so as many threads, each a thread start and hand-over on the path of every command.
The daemon (``hal serve``) and every CLI command's event loop (``cli.app.run_async``: an
in-process ``hal run``, ``hal pool``, ``hal image``) wait this way. The stdlib's
``PidfdChildWatcher`` of 3.11 is bound to one loop, and the daemon starts subprocesses on
others too (a submission runs on a loop of its own in a worker thread).
:class:`LoopPidfdWatcher` is the watcher of Python 3.12 (which uses it by default where
pidfds work): each child's pidfd is read by the loop running when it was started, and
nothing else is touched (no ``SIGCHLD`` handler, no ``waitpid(-1)``: a child started outside
asyncio is never reaped behind its owner's back).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVarTuple, Unpack

_Ts = TypeVarTuple("_Ts")


def pidfds_work() -> bool:
    """Whether this kernel and Python offer ``pidfd_open`` (Linux 5.3 and later)."""
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


if sys.version_info < (3, 12):  # 3.12 deprecates child watchers (and uses pidfds itself)

    class LoopPidfdWatcher(asyncio.AbstractChildWatcher):
        """Waits for each child on the loop that started it, through its pidfd."""

        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._children: dict[int, tuple[asyncio.AbstractEventLoop, int]] = {}

        def add_child_handler(
            self, pid: int, callback: Callable[[int, int, Unpack[_Ts]], object], *args: *_Ts
        ) -> None:
            """Call ``callback(pid, returncode, *args)`` on this loop when ``pid`` ends."""
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(pid)  # a child that already ended is still readable
            with self._lock:
                self._children[pid] = (loop, pidfd)
            loop.add_reader(pidfd, self._reap, pid, callback, args)

        def _reap(self, pid: int, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
            with self._lock:
                loop, pidfd = self._children.pop(pid)
            loop.remove_reader(pidfd)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:  # reaped elsewhere: asyncio's own convention
                import logging  # only here: the CLI's start-up does not pay for it

                returncode = 255
                logging.getLogger(__name__).warning(
                    "child process %d was reaped elsewhere: exit status 255", pid
                )
            else:
                returncode = os.waitstatus_to_exitcode(status)
            finally:
                os.close(pidfd)
            callback(pid, returncode, *args)

        def remove_child_handler(self, pid: int) -> bool:
            """Stop watching ``pid`` (from its own loop); whether it was watched."""
            with self._lock:
                found = self._children.pop(pid, None)
            if found is None:
                return False
            loop, pidfd = found
            loop.remove_reader(pidfd)
            os.close(pidfd)
            return True

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            """Nothing to attach: every child is watched by the loop that started it."""

        def is_active(self) -> bool:
            """Always ready: it needs no loop of its own."""
            return True

        def close(self) -> None:
            """Nothing to release: pending children keep their readers on their loops."""

        def __enter__(self) -> LoopPidfdWatcher:
            return self

        def __exit__(self, *exc: object) -> None:
            return None


@contextlib.contextmanager
def pidfd_child_watcher() -> Iterator[bool]:
    """Wait for subprocesses with pidfds while inside (Python 3.11 with pidfds); yields
    whether it did. The watcher before is put back on the way out."""
    if sys.version_info >= (3, 12) or not pidfds_work():
        yield False
        return
    with _watcher_lock:
        previous = asyncio.get_event_loop_policy().get_child_watcher()
        asyncio.set_child_watcher(LoopPidfdWatcher())
    try:
        yield True
    finally:
        with _watcher_lock:
            asyncio.set_child_watcher(previous)


_watcher_lock = threading.Lock()
