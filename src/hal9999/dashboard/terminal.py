"""The browser terminal: a websocket attached to a running task's tmux session through a pty.

Read-only by default (``tmux attach -f read-only,ignore-size``: keys are dropped by tmux
itself, and the browser's size never shrinks the agent's window). ``?write=1`` attaches for
typing. Either way the gate has checked the Origin and the session's credential (sent as a
subprotocol, ``hal-session.<credential>``, beside ``hal``, the one the server answers): in
the handshake, so a socket without it is never accepted (an accepted websocket leaves the
listener's count of unauthenticated connections).
Frames: binary from the server are terminal output; text from the browser is JSON,
``{"data": "keys"}`` or ``{"resize": [cols, rows]}``.

Keys reach tmux byte for byte, in order, never dropped: the pty is put in raw input mode
before the attach starts (tmux does so itself when it takes the terminal, but a key written
before that met the line discipline: Enter read as Ctrl-J, a backspace or Ctrl-U editing the
keys before it, Ctrl-C or Ctrl-Z flushing them, Ctrl-S stopping the output, each echoed back
to the page), and a write the pty cannot take whole (a paste while tmux is slow to read)
waits for room for the rest instead of losing it (or ending the terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import termios
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999.dashboard.auth import TERMINAL_PROTOCOL
from hal9999.dashboard.guard import session_of
from hal9999.errors import HalError

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from hal9999.server.daemon import Daemon
    from hal9999.store import TaskRecord

MAX_INPUT = 4096
"""Largest keystroke frame accepted from the browser."""


def attach_argv(record: TaskRecord, *, write: bool) -> list[str]:
    """The command that attaches to the task's live agent, or a HalError saying why not."""
    from hal9999.errors import ProcessError, TaskStateError
    from hal9999.process.registry import load_process_manager
    from hal9999.spec import ArgvCommand
    from hal9999.tasks.context import process_spec
    from hal9999.tasks.session import Session
    from hal9999.tasks.state import ACTIVE

    if record.status not in ACTIVE:
        raise TaskStateError(f"task {record.id} is {record.status}: nothing to attach to")
    manager = load_process_manager(record.process_manager, runtime_dir=None)
    spec = process_spec(record, Session(Path(record.session_dir)), ArgvCommand(argv=("true",)))
    argv = manager.attach_command(spec)
    if argv is None or "attach-session" not in argv:
        raise ProcessError(f"the {record.process_manager} process manager cannot attach")
    at = argv.index("attach-session") + 1
    flags = "ignore-size" if write else "read-only,ignore-size"
    return [*argv[:at], "-f", flags, *argv[at:]]


RAW_IFLAG_OFF = termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.ISTRIP
RAW_LFLAG_OFF = termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN
"""The input processing the pty's line discipline would do to keys (what tmux turns off)."""


def open_pty() -> tuple[int, int]:
    """A pty (master, slave) whose input side is raw from the start; output processing stays
    (a message of a failed attach reads right) until tmux takes the terminal."""
    master, slave = os.openpty()
    mode = termios.tcgetattr(slave)
    mode[0] &= ~RAW_IFLAG_OFF
    mode[3] &= ~RAW_LFLAG_OFF
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(slave, termios.TCSANOW, mode)
    _resize(master, 120, 32)
    return master, slave


async def write_all(master: int, data: bytes) -> None:
    """All of ``data`` to the pty, waiting for room when its input queue is full (~14 KiB:
    tmux not reading yet or slow to) rather than dropping the rest."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        with contextlib.suppress(BlockingIOError):
            view = view[os.write(master, view) :]
            continue
        await _writable(loop, master)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    room = loop.create_future()

    def ready() -> None:
        if not room.done():
            room.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await room
    finally:
        loop.remove_writer(fd)


def _resize(fd: int, cols: int, rows: int) -> None:
    cols, rows = max(2, min(cols, 500)), max(2, min(rows, 200))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _pump_out(master: int, websocket: WebSocket) -> None:
    """Terminal output to the browser until the attach ends."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(master)
        queue.put_nowait(data)

    loop.add_reader(master, readable)
    try:
        while data := await queue.get():
            await websocket.send_bytes(data)
    finally:
        loop.remove_reader(master)


async def _pump_in(master: int, websocket: WebSocket, write: bool) -> None:
    """Keys and sizes from the browser (keys only in write mode)."""
    while True:
        text = await websocket.receive_text()
        if len(text) > MAX_INPUT:
            continue
        try:
            frame = json.loads(text)
        except ValueError:
            continue
        if not isinstance(frame, dict):
            continue
        size = frame.get("resize")
        if isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) for n in size):
            _resize(master, size[0], size[1])
        data = frame.get("data")
        if write and isinstance(data, str):
            await write_all(master, data.encode())


def terminal_endpoint(daemon: Daemon | None) -> Any:
    """The websocket endpoint for ``/terminal/{task_id}``."""

    async def endpoint(websocket: WebSocket) -> None:
        session = session_of(websocket.scope)
        write = websocket.query_params.get("write") == "1"
        if daemon is None or session is None:
            await websocket.close(code=4401)
            return
        # A browser wants one of the subprotocols it offered back: `hal`, never the credential.
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(TERMINAL_PROTOCOL if TERMINAL_PROTOCOL in offered else None)
        try:
            record = await daemon.tasks.get(websocket.path_params["task_id"])
            argv = await asyncio.to_thread(attach_argv, record, write=write)
        except HalError as exc:
            await websocket.send_text(json.dumps({"error": str(exc)}))
            await websocket.close(code=4409)
            return
        from starlette.websockets import WebSocketDisconnect

        master, slave = open_pty()
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("TMUX", None)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        os.set_blocking(master, False)
        out = asyncio.create_task(_pump_out(master, websocket))
        keys = asyncio.create_task(_pump_in(master, websocket, write))
        try:
            await asyncio.wait({out, keys}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in (out, keys):
                pump.cancel()
            await asyncio.gather(out, keys, return_exceptions=True)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # detaches the tmux client; the agent keeps running
            await proc.wait()
            os.close(master)
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close()  # unless the browser went first

    return endpoint
