"""Host processes: whether one lives (by pid and start time: a pid alone may name a later
process that reused it), killing one until it is gone, and killing a subprocess's whole
process group.

Used wherever hal starts a helper that may block on the network or a disk (git, image build
steps): when the caller is cancelled (a timeout, Ctrl-C, SIGTERM), the helper and everything
it started must end too, and hal must not return before they have. :func:`run_captured`
runs one to its end that way on the event loop without asyncio's subprocess transports
(host git).
"""

from __future__ import annotations

import contextlib
import functools
import os

# Light to import (the thin `hal task list` asks whether runners live): asyncio is imported
# by what uses it, and the C module under `signal` (same names) is used, not `signal`, which
# builds its enums at import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import signal
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any, BinaryIO
else:
    import _signal as signal

_GONE_WAIT_S = 5.0
POLL_S = 0.02
"""How often a wait for another process's end looks again (no event tells it)."""


def started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22),
    or None when there is no such live process (gone, or a zombie): with the pid, it names
    one process, where a pid alone may name a later one that reused it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (the state); a zombie has ended, whether reaped yet or not
    # ("x" is how kernels before 4.14 wrote dead).
    if fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


def alive(pid: int | None, since: int | None = None) -> bool:
    """Whether ``pid`` is a live process (a zombie has ended); with ``since`` (its
    :func:`started`), whether it is still that process, not a later one that reused the pid."""
    if pid is None or pid <= 0:
        return False
    now = started(pid)
    return now is not None and (since is None or now == since)


async def kill_until_gone(
    pid: int,
    *,
    since: int | None = None,
    still: Callable[[], bool] | None = None,
    group: bool = False,
    term_s: float = 0.0,
    gone_s: float = _GONE_WAIT_S,
) -> bool:
    """End process ``pid`` (its process group, with ``group``): SIGTERM and ``term_s``
    seconds to exit first when ``term_s`` is given, then SIGKILL, and wait until it is gone,
    at most ``gone_s``. Whether it is gone.

    Only the process proven to be the one meant is signalled: ``since`` (its
    :func:`started`) and ``still`` (any other proof, such as its command line) are checked
    before each signal, through a pidfd where there are pidfds, so a pid reused meanwhile
    is never signalled; a signal not sent (``still`` does not hold yet) is tried again.
    With ``since``, it is gone once that process is (``still`` may stop holding before:
    a process's command line reads empty while it exits); without, once ``still`` fails."""
    import asyncio

    def meant() -> bool:
        if not alive(pid, since):
            raise ProcessLookupError(pid)
        return still is None or still()

    def running() -> bool:
        return alive(pid, since) if since is not None else _is_meant(meant)

    loop = asyncio.get_running_loop()
    for sig, wait in ((signal.SIGTERM, term_s), (signal.SIGKILL, gone_s)):
        if sig == signal.SIGTERM and not term_s:
            continue
        deadline, sent = loop.time() + wait, False
        # Polling: another process's exit cannot be awaited as an event here.
        while running() and loop.time() < deadline:
            sent = sent or _signal(pid, sig, meant, group=group)
            await asyncio.sleep(POLL_S)
        if not running():
            return True
    return False


def _is_meant(meant: Callable[[], bool]) -> bool:
    try:
        return meant()
    except OSError:
        return False


def _signal(pid: int, sig: int, meant: Callable[[], bool], *, group: bool) -> bool:
    """Send ``sig`` to ``pid`` (or its group) if ``meant()`` holds of it; whether it was."""
    if group:  # a group has no pidfd: checked, then signalled by its leader's pid
        if not _is_meant(meant):
            return False
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return send_pinned(pid, sig, meant)


async def kill_group_until_gone(proc: asyncio.subprocess.Process, term_s: float = 0.0) -> None:
    """SIGKILL the process group ``proc`` leads (started with ``start_new_session=True``)
    and reap ``proc``; safe to call when it has already exited. With ``term_s``, the group
    is sent SIGTERM first and ``proc`` given that long to end.

    Shielded from cancellation: it runs while the caller is being cancelled, and a second
    cancellation must not leave the group running.
    """
    import asyncio

    await asyncio.shield(_kill_and_reap(proc, term_s))


async def _kill_and_reap(proc: asyncio.subprocess.Process, term_s: float) -> None:
    import asyncio

    if term_s and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), term_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _GONE_WAIT_S)
    if term_s:  # it may have ended before the rest of its group, which held its pipes
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.read(), _GONE_WAIT_S)


async def run_captured(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    stdin: bytes | BinaryIO | None = None,
    env: Mapping[str, str] | None = None,
    discard_stdout: bool = False,
    term_s: float = 0.0,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to its end in a session (and process group) of its own, ``stdin`` (bytes
    written to it, an open file, or nothing) its input: its exit status (negative for a
    signal), its stdout and its stderr, once it has exited and closed both. ``OSError`` as
    :class:`subprocess.Popen` raises it (no such program or ``cwd``). Cancelled (a timeout,
    Ctrl-C, SIGTERM), its group is killed and it is reaped, as :func:`kill_group_until_gone`
    (``term_s``: SIGTERM first, and that long to end: a git removes its lock files on it).
    ``discard_stdout``: its stdout is ``/dev/null`` (for a child that leaves a process behind
    with it, as the keeper's launcher does: a pipe would not end while that process lives).

    ``asyncio.create_subprocess_exec`` and ``communicate`` with about half the daemon's CPU
    that asyncio's transports, protocols and
    child watcher take: the same ``Popen`` (vfork), its pipes and its pidfd read by
    the running loop. Without pidfds (an old kernel), asyncio's way."""
    import asyncio
    import subprocess

    loop = asyncio.get_running_loop()
    if not _pidfds():
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, start_new_session=True,
            stdin=subprocess.PIPE if isinstance(stdin, bytes) else stdin or subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if discard_stdout else subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await proc.communicate(stdin if isinstance(stdin, bytes) else None)
        except BaseException:
            await kill_group_until_gone(proc, term_s)
            raise
        assert proc.returncode is not None
        return proc.returncode, out or b"", err  # None when discarded
    # Started on the loop's thread as asyncio's own does (vfork: the daemon is not copied).
    # Unbuffered: only their descriptors are used (no isatty, no lseek for each).
    child = subprocess.Popen(  # noqa: ASYNC220
        argv, cwd=cwd, env=env, start_new_session=True, bufsize=0,
        stdin=subprocess.PIPE if isinstance(stdin, bytes) else stdin or subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if discard_stdout else subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    watched = _Watched(loop, child, stdin if isinstance(stdin, bytes) else None)
    try:
        await watched.done
    except BaseException:
        # Killed and reaped (the pipes closed) even if cancelled again.
        await asyncio.shield(watched.end(term_s))
        raise
    watched.close()
    return child.wait(), b"".join(watched.out), b"".join(watched.err)


class _Watched:
    """A child's pipes and pidfd on the loop: ``done`` once it exited and closed both
    outputs (its input written, or refused by its end)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, child: Any, data: bytes | None) -> None:
        self.loop, self.child = loop, child
        self.done: asyncio.Future[None] = loop.create_future()
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.exited: asyncio.Future[None] = loop.create_future()
        self.readers: list[int] = []
        try:
            self.pidfd = os.pidfd_open(child.pid)
        except BaseException:
            _kill_group(child)
            child.wait()
            self._close_pipes()
            raise
        outputs = [(p, c) for p, c in ((child.stdout, self.out), (child.stderr, self.err)) if p]
        self.pending = 1 + len(outputs)
        for pipe, chunks in outputs:
            os.set_blocking(pipe.fileno(), False)
            self._watch(pipe.fileno(), self._read, pipe.fileno(), chunks)
        self._watch(self.pidfd, self._exit)
        self.data = memoryview(data or b"")
        self.writing = bool(self.data) and child.stdin is not None
        if self.writing:
            os.set_blocking(child.stdin.fileno(), False)
            self.loop.add_writer(child.stdin.fileno(), self._write)
        elif child.stdin is not None:
            child.stdin.close()  # nothing to write: its end of input at once

    def _watch(self, fd: int, callback: Any, *args: Any) -> None:
        self.loop.add_reader(fd, callback, *args)
        self.readers.append(fd)

    def _unwatch(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.readers.remove(fd)

    def _step(self) -> None:
        self.pending -= 1
        if not self.pending and not self.done.done():
            self.done.set_result(None)

    def _read(self, fd: int, chunks: list[bytes]) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            chunks.append(chunk)
            return
        self._unwatch(fd)
        self._step()

    def _exit(self) -> None:
        self._unwatch(self.pidfd)
        self.exited.set_result(None)
        self._step()

    def _write(self) -> None:
        stdin = self.child.stdin
        try:
            sent = os.write(stdin.fileno(), self.data)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):  # it ended without reading it all
            sent = len(self.data)
        self.data = self.data[sent:]
        if not self.data:
            self.loop.remove_writer(stdin.fileno())
            self.writing = False
            stdin.close()

    async def end(self, term_s: float) -> None:
        """Its group killed (SIGTERM and ``term_s`` seconds to exit first, when given) and
        the child reaped."""
        import asyncio

        if term_s and not self.exited.done():
            _kill_group(self.child, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), term_s)
        _kill_group(self.child)
        await self.reap()

    async def reap(self) -> None:
        import asyncio

        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), _GONE_WAIT_S)
            if self.exited.done():
                self.child.wait()
        finally:
            self.close()

    def close(self) -> None:
        if self.pidfd < 0:
            return
        for fd in list(self.readers):
            self._unwatch(fd)
        if self.writing:
            self.loop.remove_writer(self.child.stdin.fileno())
        os.close(self.pidfd)
        self.pidfd = -1
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.child.stdin, self.child.stdout, self.child.stderr):
            if pipe is not None:
                pipe.close()


def _kill_group(child: Any, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)


def kill_pinned(pid: int, still: Callable[[], bool]) -> bool:
    """SIGKILL ``pid`` if ``still()`` holds of it; whether it was signalled (see
    :func:`send_pinned`)."""
    return send_pinned(pid, signal.SIGKILL, still)


def send_pinned(pid: int, sig: int, still: Callable[[], bool]) -> bool:
    """Send ``sig`` to ``pid`` if ``still()`` holds of it; whether it was signalled.

    Checked and signalled through a pidfd, so the process checked is the one signalled,
    never another that reused the pid after a scan found it (without pidfds, a kernel
    before 5.3: checked, then signalled by pid). ``still`` may raise ``OSError`` (the
    process has gone): not signalled.
    """
    if not _pidfds():
        try:
            if still():
                os.kill(pid, sig)
                return True
        except OSError:
            pass
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not still():
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@functools.cache
def _pidfds() -> bool:
    from hal9999.children import pidfds_work

    return pidfds_work()
