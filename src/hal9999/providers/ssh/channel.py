"""One remote command over an open connection: stdin in, output streamed, exit status last."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from hal9999.errors import ExecError
from hal9999.providers.base import STDOUT_LIMIT, StreamEvent
from hal9999.providers.handle import collect
from hal9999.providers.ssh import remote

CHUNK = 65536
MAX_SESSIONS = 8
"""Channels open at once on one connection: sshd refuses more than ``MaxSessions`` (10 by
default), so commands beyond this wait for a free one instead of failing."""
_sessions: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def stream(
    conn: Any,
    command: str,
    *,
    stdin: bytes | AsyncIterator[bytes] = b"",
    what: str = "command",
    retryable: bool = False,
) -> AsyncGenerator[StreamEvent, None]:
    """Run ``command`` (a remote command string); ``stdin`` is written then closed, or fed
    as its chunks come (see :func:`_feed`). A lost connection raises :class:`ExecError`;
    the caller kills leftovers by their marker."""
    asyncssh = _asyncssh()
    limit = _sessions.setdefault(conn, asyncio.Semaphore(MAX_SESSIONS))
    async with limit:
        try:
            async with contextlib.aclosing(_session(conn, command, stdin, what, asyncssh)) as ev:
                async for event in ev:
                    yield event
        except NotStarted as exc:
            if retryable:
                raise
            raise exc.error from exc


async def _session(
    conn: Any, command: str, stdin: bytes | AsyncIterator[bytes], what: str, asyncssh: Any
) -> AsyncGenerator[StreamEvent, None]:
    for attempt in range(1, 7):
        try:
            proc = await conn.create_process(command, encoding=None)
            break
        except asyncssh.ChannelOpenError as exc:
            # sshd frees a session slot a little after the client saw the channel close, so
            # a refusal on a live connection is retried after a pause (nothing ran).
            if conn.is_closed() or attempt == 6:
                raise NotStarted(ExecError(f"cannot start {what} over ssh: {exc}")) from exc
            await asyncio.sleep(0.05 * attempt)
        except (asyncssh.Error, OSError) as exc:
            raise NotStarted(ExecError(f"cannot start {what} over ssh: {exc}")) from exc
    feeder: asyncio.Task[None] | None = None
    try:
        queue: asyncio.Queue[StreamEvent | Exception | None] = asyncio.Queue(maxsize=64)
        if isinstance(stdin, bytes):
            # A command may end (and its channel close) before reading its stdin: not an error.
            with contextlib.suppress(BrokenPipeError, ConnectionError):
                if stdin:
                    proc.stdin.write(stdin)
                proc.stdin.write_eof()
        else:
            feeder = asyncio.create_task(_feed(proc, stdin, queue))

        async def pump(reader: Any, kind: str) -> None:
            try:
                while chunk := await reader.read(CHUNK):
                    await queue.put(StreamEvent(kind, chunk))  # type: ignore[arg-type]
            finally:
                await queue.put(None)

        pumps = [
            asyncio.create_task(pump(proc.stdout, "stdout")),
            asyncio.create_task(pump(proc.stderr, "stderr")),
        ]
        try:
            open_pipes = 2
            while open_pipes:
                item = await queue.get()
                if item is None:
                    open_pipes -= 1
                elif isinstance(item, Exception):
                    raise item  # feeding stdin failed: the command waits for the rest
                else:
                    yield item
            for task in pumps:
                await task  # a lost connection surfaces here
            await proc.wait_closed()
        finally:
            for task in pumps:
                task.cancel()
            if feeder is not None:
                # Ended before its source is closed by the caller (it may be mid-chunk).
                feeder.cancel()
                await asyncio.wait([feeder])
        yield StreamEvent("exit", exit_code=exit_code(proc))
    except (asyncssh.Error, OSError, BrokenPipeError) as exc:
        raise ExecError(f"the ssh connection was lost during {what}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            proc.close()


async def _feed(proc: Any, chunks: AsyncIterator[bytes], queue: asyncio.Queue[Any]) -> None:
    """Write ``chunks`` to the command's stdin as they come, waiting for the channel to
    drain between them (so nothing piles up), then EOF. An error (the source's, or a lost
    connection) goes to ``queue``: the session raises it."""
    try:
        # The remote side may end early (a full disk): its status says why.
        with contextlib.suppress(BrokenPipeError, ConnectionError):
            async for chunk in chunks:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            proc.stdin.write_eof()
    except Exception as exc:
        await queue.put(exc)


class NotStarted(Exception):
    """The channel did not open: the command never ran, so running it again is safe.
    Callers that asked for it (``retryable=True``) get this; others the :attr:`error`."""

    def __init__(self, error: ExecError) -> None:
        super().__init__(error.message)
        self.error = error


def exit_code(proc: Any) -> int:
    """The command's status; a signal as 128+n, and 255 when none came (like ssh(1))."""
    if proc.exit_status is not None and proc.exit_status >= 0:
        return int(proc.exit_status)
    signals = {"KILL": 9, "TERM": 15, "HUP": 1, "INT": 2, "PIPE": 13}
    if proc.exit_signal:
        return 128 + signals.get(proc.exit_signal[0], 0)
    return 255


async def run(
    conn: Any, command: str, *, stdin: bytes = b"", what: str
) -> tuple[int, bytes, bytes]:
    """Run to completion: status, stdout, stderr (each bounded as a sandbox command's, see
    :func:`~hal9999.providers.handle.collect`)."""
    result = await collect(stream(conn, command, stdin=stdin, what=what), time_limit=None,
                           what=what)  # fmt: skip
    return result.exit_code, result.stdout, result.stderr


async def run_fed(
    conn: Any, command: str, chunks: AsyncIterator[bytes], *, what: str,
    stdout_limit: int = STDOUT_LIMIT,
) -> tuple[int, bytes]:  # fmt: skip
    """Run ``command`` with its stdin fed from ``chunks`` as they come: its status and
    stderr. Its stdout (none expected) and stderr are bounded as a sandbox command's (see
    :func:`~hal9999.providers.handle.collect`): the remote host's output is not hal's."""
    result = await collect(stream(conn, command, stdin=chunks, what=what), time_limit=None,
                           what=what, stdout_limit=stdout_limit)  # fmt: skip
    return result.exit_code, result.stderr


async def kill_marked(conn: Any, var: str, value: str) -> bool:
    """Kill every remote process whose environment carries ``var=value`` and all under them
    (:data:`.remote.END`); whether none is left."""
    argv = ["sh", "-c", remote.END, "hal-kill", remote.reaper_source(), var, value]
    code, _, _ = await run(conn, remote.plain(argv), what="kill")
    return code == 0


def _asyncssh() -> Any:
    from hal9999.providers.ssh.connections import load_asyncssh

    return load_asyncssh()
