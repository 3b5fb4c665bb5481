"""Running sandbox commands as host processes: exact environment, own session, sure kills.

Every command starts in a session of its own, from a :class:`Launch` whose ``env`` is the
complete environment: nothing leaks in from the ``hal`` process, and secrets travel in the
environment, never in argv (which ``ps`` shows to every user).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Literal

from hal9999.errors import ExecError, ProviderError
from hal9999.providers.base import ExecResult, Launch, StreamEvent

LAUNCHER_SCRIPT = (
    'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'
)
"""Joins the cgroups named before ``--``, then execs the rest; a constant, never interpolated.

Writing the pid before exec means the sandboxed program and all it forks are born inside;
a failed write exits 125 rather than run the command without its limits.
"""
MARKER_VAR = "HAL_SANDBOX"
"""Set in every sandbox command's environment, so processes can be found without a cgroup."""
CHUNK = 65536
QUEUE_CHUNKS = 64
DRAIN_GRACE = 1.0
KILL_DEADLINE = 3.0

_Item = StreamEvent | Literal["eof", "abandon"]


def launcher_argv(procs_files: Sequence[str], argv: Sequence[str]) -> list[str]:
    """The host argv that joins ``procs_files`` (cgroup.procs paths) and then runs ``argv``."""
    if not procs_files:
        return list(argv)  # nothing to join: spare the shell
    return ["/bin/sh", "-c", LAUNCHER_SCRIPT, "hal-launch", *procs_files, "--", *argv]


def exit_status(returncode: int) -> int:
    """A shell-style exit status: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def kill_group(pgid: int) -> None:
    """SIGKILL a process group, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def spawn(launch: Launch, *, stdin: bool) -> asyncio.subprocess.Process:
    """Start ``launch`` in a new session with piped output."""
    try:
        return await asyncio.create_subprocess_exec(
            *launch.argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=launch.env,
            cwd=launch.cwd,
            start_new_session=True,
        )
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ExecError(f"cannot start {launch.argv[0]}: {exc.strerror}{where}") from exc


async def stream(
    launch: Launch, *, stdin: bytes | None = None
) -> AsyncGenerator[StreamEvent, None]:
    """Run ``launch``, yielding output chunks as they come and the exit event last.

    When the command exits, whatever it left running in its process group is killed: a
    command runs to completion, background work belongs to a process manager. Closing the
    iterator early kills the command.
    """
    proc = await spawn(launch, stdin=stdin is not None)
    assert proc.stdout is not None and proc.stderr is not None
    # Bounded: a slow consumer stalls the pipes, and so the command, instead of our memory.
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=QUEUE_CHUNKS)

    async def pump(reader: asyncio.StreamReader, kind: Literal["stdout", "stderr"]) -> None:
        while chunk := await reader.read(CHUNK):
            await queue.put(StreamEvent(kind, chunk))
        await queue.put("eof")

    async def feed(data: bytes) -> None:
        assert proc.stdin is not None
        # The command may exit without reading its input; that is its business.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(data)
            await proc.stdin.drain()
            proc.stdin.close()

    async def reap() -> None:
        await proc.wait()
        kill_group(proc.pid)
        # A child that started its own session may still hold the pipes open.
        await asyncio.sleep(DRAIN_GRACE)
        await queue.put("abandon")

    tasks = [
        asyncio.create_task(pump(proc.stdout, "stdout")),
        asyncio.create_task(pump(proc.stderr, "stderr")),
        asyncio.create_task(reap()),
    ]
    if stdin is not None:
        tasks.append(asyncio.create_task(feed(stdin)))
    try:
        open_pipes = 2
        while open_pipes:
            item = await queue.get()
            if item == "eof":
                open_pipes -= 1
            elif item == "abandon":
                break
            elif isinstance(item, StreamEvent):
                yield item
        yield StreamEvent("exit", exit_code=exit_status(await proc.wait()))
    finally:
        if proc.returncode is None:
            kill_group(proc.pid)
            await proc.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(
    launch: Launch, *, stdin: bytes | None, time_limit: float | None, what: str
) -> ExecResult:
    """Run ``launch`` to completion.

    Past ``time_limit`` seconds the command's process group is killed and :class:`ExecError`
    raised (``details`` keep ``timeout`` and the partial ``stdout``/``stderr``): a timed-out
    command has no exit status, and a made-up 124 could be mistaken for a real one.
    """
    out, err = bytearray(), bytearray()
    code = -1
    events = stream(launch, stdin=stdin)
    try:
        async with contextlib.aclosing(events), asyncio.timeout(time_limit):
            async for event in events:
                if event.kind == "stdout":
                    out += event.data
                elif event.kind == "stderr":
                    err += event.data
                elif event.exit_code is not None:
                    code = event.exit_code
    except TimeoutError as exc:
        raise ExecError(
            f"command timed out after {time_limit:g}s and was killed: {what}",
            hint="raise the timeout, or run long work through a process manager",
            timeout=time_limit,
            stdout=bytes(out),
            stderr=bytes(err),
        ) from exc
    return ExecResult(code, bytes(out), bytes(err))


def marked_pids(sandbox_id: str) -> set[int]:
    """Host processes whose environment carries ``HAL_SANDBOX=<sandbox_id>``."""
    needle = f"{MARKER_VAR}={sandbox_id}".encode()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if needle in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


async def kill_marked(sandbox_id: str) -> None:
    """SIGKILL every process of the sandbox found by its environment marker, until none is left.

    The fallback when no cgroup tracks the sandbox: a process that scrubs its environment
    escapes it, which is why cgroups are preferred whenever the host offers one.
    """
    deadline = time.monotonic() + KILL_DEADLINE
    while pids := marked_pids(sandbox_id) - {os.getpid()}:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ProviderError(f"processes {sorted(pids)} of sandbox {sandbox_id} survived")
        await asyncio.sleep(0.01)
