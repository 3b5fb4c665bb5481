"""``python -m hal9999.providers.k8s.relay``: run one command in a pod sandbox from a host
process (what a process manager starts; see :meth:`KubeSandbox.launch`).

Values of the command's variables come from this process's environment (names in argv) and
reach the pod on the exec stream's stdin, never in its URL. Before the command the read-only
directories (the prompt) go out; while it runs the writable ones come back every
``CHECKPOINT_S``; when it ends (or this relay is told to stop) they come back once more and
the command's processes in the pod are killed. This process's stdin streams to the
command's (closed at its end with v5's close frame). A lost stream ends the relay with
status 255 and one line on stderr; the hal host keeps the last checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from hal9999.errors import HalError
from hal9999.providers.k8s.config import connect
from hal9999.providers.k8s.sandbox import KubeRecords, KubeSandbox
from hal9999.providers.k8s.sockmux import SocketChannel
from hal9999.providers.stdinfeed import feed_stdin
from hal9999.spec import ArgvCommand

CHECKPOINT_S = 60.0
"""How often a running command's work comes back to the hal host."""


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hal-k8s-relay")
    parser.add_argument("--records", required=True, type=Path)
    parser.add_argument("--id", required=True)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--cwd")
    parser.add_argument("command", nargs="+")
    return parser.parse_args(argv)


async def _stdin() -> AsyncIterator[bytes]:
    """Our stdin, read by a daemon thread (it may be a file the loop cannot watch)."""
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    feed_stdin(asyncio.get_running_loop(), chunks)
    while data := await chunks.get():
        yield data


async def _checkpoints(sandbox: KubeSandbox) -> None:
    while True:
        await asyncio.sleep(CHECKPOINT_S)
        with contextlib.suppress(HalError):
            await sandbox.pull()


async def _run(sandbox: KubeSandbox, args: argparse.Namespace, token: str) -> int:
    env = {name: os.environ.get(name, "") for name in args.env}
    command = ArgvCommand(argv=tuple(args.command), cwd=args.cwd)
    code = 255
    events = sandbox._events(command, env, _stdin(), token)
    async with contextlib.aclosing(events):
        async for event in events:
            if event.kind == "exit":
                code = event.exit_code if event.exit_code is not None else 255
            else:
                fd = 1 if event.kind == "stdout" else 2
                await asyncio.to_thread(os.write, fd, event.data)
    return code


async def relay(args: argparse.Namespace) -> int:
    """Run the command; its exit status."""
    records = KubeRecords(args.records)
    record = records.load(args.id)
    cluster = connect(record.settings)

    async def keep(_: str) -> None:  # the relay never destroys its sandbox
        return None

    sandbox = KubeSandbox(record, records, lambda: cluster, keep)
    token = secrets.token_hex(8)
    await sandbox.push(writable=False)
    sockets = SocketChannel(sandbox, _say)  # the gateway's sockets, answering in the pod
    await sockets.start()
    checkpoints = asyncio.create_task(_checkpoints(sandbox))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    running = asyncio.create_task(_run(sandbox, args, token))
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            running.cancel()  # closing the stream kills the command by its marker
            with contextlib.suppress(BaseException):
                await running
            return 143
        try:
            return running.result()
        except HalError as exc:
            message = f"hal: {exc.one_line()}; the hal host keeps the last checkpoint's work\n"
            os.write(2, message.encode())
            return 255
    finally:
        stop.cancel()
        checkpoints.cancel()
        await sockets.stop()
        with contextlib.suppress(HalError, OSError, TimeoutError):
            async with asyncio.timeout(60):  # a lost cluster must not hold the end
                await sandbox.pull()


def _say(text: str) -> None:
    sys.stderr.write(f"hal: {text}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return asyncio.run(relay(_arguments(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
