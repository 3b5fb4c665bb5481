"""``python -m hal9999.providers.rayrelay``: run one command in a ray sandbox from a host
process (what a process manager starts; see :meth:`RaySandbox.launch`).

The relay joins the Ray cluster itself, so the run goes on when the hal process that
launched it dies (the process manager holds the relay, as it holds any launched command).
Values of the command's variables come from this process's environment (names in argv) and
reach the node as the arguments of the host actor's call, never in a command line. Before
the command the read-only directories (the prompt) go out; while it runs the writable ones
come back every ``checkpoint_s``; when it ends (or this relay is told to stop: the node
kills the command) they come back once more. A node lost under the run ends the relay with
status 255 and one line on stderr; the hal host keeps what the last checkpoint brought back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from hal9999.errors import HalError
from hal9999.providers.raysandbox import RaySandbox
from hal9999.providers.stdinfeed import feed_stdin
from hal9999.spec import ArgvCommand

STOPPED = 143
"""Exit status of a run this relay was told to stop (SIGTERM's)."""
LOST = 255
"""Exit status when the node (or the cluster) could not be reached."""


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hal-ray-relay")
    parser.add_argument("--records", required=True, type=Path)
    parser.add_argument("--config", required=True, help="[providers.ray] settings as JSON")
    parser.add_argument("--id", required=True)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--cwd")
    parser.add_argument("--stdin", action="store_true",
                        help="our stdin goes to the command (an attached shell)")
    parser.add_argument("command", nargs="+")
    return parser.parse_args(argv)


async def _checkpoints(sandbox: RaySandbox, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(HalError):
            await sandbox.pull()


async def _run(sandbox: RaySandbox, command: ArgvCommand, env: dict[str, str],
               feed: asyncio.Queue[bytes] | None) -> int:  # fmt: skip
    code = LOST
    stream = sandbox.stream(command, env=env, feed=feed)
    async with contextlib.aclosing(stream) as events:  # type: ignore[type-var]
        async for event in events:
            if event.kind == "exit":
                code = event.exit_code if event.exit_code is not None else LOST
            elif event.data:
                await asyncio.to_thread(_write_all, 1 if event.kind == "stdout" else 2,
                                        event.data)  # fmt: skip
    return code


async def relay(args: argparse.Namespace) -> int:
    """Run the command on its node; its exit status."""
    from hal9999.providers.ray import RayConfig, RayProvider

    provider = RayProvider(state_dir=args.records,
                           config=RayConfig.model_validate_json(args.config))  # fmt: skip
    sandbox = await provider.get(args.id)
    env = {name: os.environ.get(name, "") for name in args.env}
    command = ArgvCommand(argv=tuple(args.command), cwd=args.cwd)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    feed: asyncio.Queue[bytes] | None = None
    if args.stdin:
        feed = asyncio.Queue()
        feed_stdin(loop, feed)
    running = asyncio.create_task(_run(sandbox, command, env, feed))
    checkpoints = asyncio.create_task(_checkpoints(sandbox, provider.config.checkpoint_s))
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        checkpoints.cancel()
        if not running.done():
            # Cancelling the stream closes it on the node (the command is killed there)
            # and brings the session back once more (see RaySandbox.exec_stream).
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, HalError):
                await running
            return STOPPED
        return running.result()
    finally:
        for task in (checkpoints, stop):
            task.cancel()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _say(text: str) -> None:
    # The relay's stderr is the agent's log (through the supervisor): one line, no traceback.
    sys.stderr.write(f"hal: {text}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point; the command's exit status (255: the node or the cluster was lost)."""
    from hal9999.providers.ray import RayConfig, connect

    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        config = RayConfig.model_validate_json(args.config)
        # Joined here, in the main thread: Ray sets its signal handlers only there (and
        # says so on stderr, which is the run's log, when it cannot).
        connect(config.address, config.namespace)
        return asyncio.run(relay(args))
    except HalError as exc:
        _say(exc.one_line())
        return LOST
    except (OSError, ValueError) as exc:
        _say(f"the ray relay failed: {exc}")
        return LOST


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leaving Ray's driver without its shutdown: the cluster notices the driver's end by
    # itself, and the run's exit is not held for it.
    os._exit(code)
