"""What the remote relays share (``python -m`` of ssh.relay, ray.relay, k8s.relay): each runs
one command in its sandbox from a host process that a process manager holds.

The skeleton is the same everywhere: the command runs while the writable directories come
back every ``every`` seconds; SIGTERM, SIGHUP or SIGINT stop it (status :data:`STOPPED`); a
lost host, node or cluster ends it with status :data:`LOST` and one line on stderr (the
relay's stderr is the agent's log); at the end the work comes back once more, under a time
limit so that a host gone silent cannot hold the end. The provider passes in how its command
runs (a coroutine giving the exit status) and what ends it when told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from hal9999.errors import HalError
from hal9999.hostread import write_all
from hal9999.providers.base import StreamEvent
from hal9999.spec import ArgvCommand

STOPPED = 143
"""Exit status of a run the relay was told to stop (SIGTERM's)."""
LOST = 255
"""Exit status when the sandbox's host (node, cluster) could not be reached."""
FINAL_PULL_S = 60.0
"""How long the last pull may take before the relay ends without it."""
KILL_S = 20.0
"""How long ending the command where it runs may take (a host that went silent)."""
STOP_GRACE_S = int(KILL_S + FINAL_PULL_S) + 10
"""The grace a relay's launch asks for once stopped (:attr:`Launch.stop_grace_s`): its
command ended where it runs, then its last pull. Whoever stops a run waits for this before
the sandbox goes (:func:`hal9999.process.base.run_ended`), or the pull finds it gone."""


def arguments(prog: str) -> argparse.ArgumentParser:
    """The options every relay takes; a provider adds its own before parsing."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--records", required=True, type=Path)
    parser.add_argument("--id", required=True)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="a variable of the command (its value: this environment's)",
    )
    parser.add_argument("--cwd")
    parser.add_argument("command", nargs="+")
    return parser


def command_of(args: argparse.Namespace) -> ArgvCommand:
    """The command the relay runs, as parsed by :func:`arguments`."""
    return ArgvCommand(argv=tuple(args.command), cwd=args.cwd)


def env_of(args: argparse.Namespace) -> dict[str, str]:
    """The command's variables: names from argv, values from this process's environment
    (a value never stands in a command line)."""
    return {name: os.environ.get(name, "") for name in args.env}


async def follow(
    run: Coroutine[Any, Any, int],
    *,
    pull: Callable[[], Awaitable[None]],
    every: float,
    stopped: Callable[[], Awaitable[None]] | None = None,
    closing: Callable[[], Awaitable[None]] | None = None,
    final_pull: bool = True,
) -> int:
    """Await ``run`` (the command, to its exit status) with checkpoint pulls every ``every``
    seconds; the exit status. Told to stop, the run is cancelled, then ``stopped`` ends what
    is left of the command where it runs: :data:`STOPPED`. A :class:`HalError` out of the run
    is a lost host: one line, :data:`LOST`. At the end ``closing`` closes what ran beside
    the command (a socket channel); then, with ``final_pull``, the work comes back once
    more (a provider whose stream brings it back itself passes False)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    running = asyncio.create_task(run)
    checkpoints = asyncio.create_task(_checkpoints(pull, every))
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        checkpoints.cancel()
        if not running.done():
            running.cancel()
            # What the run's clean-up meets once stopped does not change the answer.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running
            if stopped is not None:
                await stopped()
            return STOPPED
        try:
            return running.result()
        except HalError as exc:
            say(f"{exc.one_line()}; the hal host keeps the last checkpoint's work")
            return LOST
    finally:
        for task in (running, checkpoints, stop):
            task.cancel()
        if closing is not None:
            await closing()
        if final_pull:
            with contextlib.suppress(HalError, OSError, TimeoutError):
                async with asyncio.timeout(FINAL_PULL_S):
                    await pull()


async def _checkpoints(pull: Callable[[], Awaitable[None]], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(HalError):
            await pull()


async def write_events(events: AsyncGenerator[StreamEvent, None]) -> int:
    """A command's output events to our stdout and stderr; its exit status (:data:`LOST`
    when the stream ended without one). The stream is closed at the end."""
    code = LOST
    async with contextlib.aclosing(events):
        async for event in events:
            if event.kind == "exit":
                code = event.exit_code if event.exit_code is not None else LOST
            elif event.data:
                await asyncio.to_thread(write_all, 1 if event.kind == "stdout" else 2,
                                        event.data)  # fmt: skip
    return code


def say(text: str) -> None:
    """One line on stderr: the relay's stderr is the agent's log (through the supervisor),
    so a failure reads as a sentence, never a traceback."""
    sys.stderr.write(f"hal: {text}\n")
    sys.stderr.flush()


def run_main(body: Callable[[], int], what: str,
             errors: tuple[type[Exception], ...] = (OSError,)) -> int:  # fmt: skip
    """``body()`` (the relay's ``asyncio.run``), its failures as one line and :data:`LOST`:
    a :class:`HalError` by its own words, one of ``errors`` as "the ``what`` relay failed"."""
    try:
        return body()
    except HalError as exc:
        say(exc.one_line())
        return LOST
    except errors as exc:
        say(f"the {what} relay failed: {exc}")
        return LOST
