"""``python -m hal9999.providers.ssh.relay``: run one command in an ssh sandbox from a host
process (what a process manager starts; see :meth:`SshSandbox.launch`).

Values of the command's variables come from this process's environment (names in argv),
and go to the remote host on the command's stdin (see :mod:`.remote`). Before the command
the read-only directories (the prompt) go out; while it runs, the writable ones come back
every ``checkpoint_s``; when it ends (or this relay is told to stop) they come back once
more and the remote processes are killed. A lost connection ends the relay with status 255
and one line on stderr; the hal host keeps the last checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import stat
import sys
import termios
import tty
from pathlib import Path
from typing import Any

from hal9999.errors import HalError
from hal9999.providers.hostexec import EXEC_MARKER_VAR
from hal9999.providers.ssh import channel, mirror, remote, session
from hal9999.providers.ssh.connections import ConnectionPool, load_asyncssh
from hal9999.providers.ssh.records import SshRecord, SshRecords
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.providers.stdinfeed import feed_stdin
from hal9999.spec import ArgvCommand


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hal-ssh-relay")
    parser.add_argument("--records", required=True, type=Path)
    parser.add_argument("--id", required=True)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--cwd")
    parser.add_argument("--session", action="store_true",
                        help="hold the run in a tmux session on the host (see .session)")
    parser.add_argument("command", nargs="+")
    return parser.parse_args(argv)


async def _checkpoints(sandbox: SshSandbox, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(HalError):
            await sandbox.pull()


async def relay(args: argparse.Namespace) -> int:
    """Run the command; its exit status."""
    records = SshRecords(args.records)
    record = records.load(args.id)
    pool = ConnectionPool(timeout=30, keepalive=5)
    sandbox = SshSandbox(record, pool, records)
    env = {name: os.environ.get(name, "") for name in args.env}
    command = ArgvCommand(argv=tuple(args.command), cwd=args.cwd)
    token = secrets.token_hex(8)
    env[EXEC_MARKER_VAR] = token
    await sandbox.push(writable=False)
    conn = await pool.get(record.host)
    listeners = await _forward_sockets(conn, record)
    line = remote.env_line(env)
    in_tmux = args.session and await _has_tmux(conn)
    interactive = sys.stdin.isatty() and not in_tmux
    if in_tmux:
        # The run lives in a tmux session on the host (what `hal task attach` opens); the
        # relay follows its output. The command gets the remote pane as its terminal.
        argv = ["sh", "-c", session.START, "hal-session", session.run_dir(record.root, token),
                session.PANE, *sandbox.remote_argv(command, tty=False)]  # fmt: skip
    else:
        argv = sandbox.remote_argv(command, tty=interactive)
    size = os.get_terminal_size(0) if interactive else None
    proc = await conn.create_process(
        remote.wrapped(argv),
        encoding=None,
        term_type=os.environ.get("TERM", "xterm-256color") if interactive else None,
        term_size=(size.columns, size.lines) if size else None,
    )
    proc.stdin.write(line)
    if in_tmux:
        proc.stdin.write_eof()
    checkpoints = asyncio.create_task(_checkpoints(sandbox, record.checkpoint_s))
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    pumps = [
        asyncio.create_task(_copy_out(proc.stdout, 1)),
        asyncio.create_task(_copy_out(proc.stderr, 2)),
    ]
    if not in_tmux:
        pumps.append(asyncio.create_task(_copy_in(proc)))
    try:
        waiting = asyncio.create_task(_finish(proc, pumps[:2]))
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (*pumps, waiting, stop):
            task.cancel()
        code = 143 if stopping.is_set() else channel.exit_code(proc)
        lost = not stopping.is_set() and proc.exit_status is None and not proc.exit_signal
        if stopping.is_set() or lost:
            # A run held in tmux outlives a lost connection: a new one ends it (the task
            # fails clearly rather than an agent running on unseen).
            # A lost connection may not know it yet (keepalives take seconds): drop it now.
            pool.forget_name(record.host.name, force=lost)
            with contextlib.suppress(HalError, TimeoutError):
                async with asyncio.timeout(20):
                    conn = await pool.get(record.host)
                    await channel.kill_marked(conn, EXEC_MARKER_VAR, token)
                    await channel.kill_marked(conn, EXEC_MARKER_VAR, session.inner_token(token))
        if lost:
            _say(f"the ssh connection to {record.host.name} was lost; the hal host keeps "
                 "the work of the last checkpoint")  # fmt: skip
            return 255
        return code
    finally:
        checkpoints.cancel()
        for listener in listeners:
            listener.close()
        proc.close()
        with contextlib.suppress(HalError, OSError, TimeoutError):
            async with asyncio.timeout(60):  # a host that went silent must not hold the end
                await sandbox.pull()
        await pool.close()


async def _forward_sockets(conn: Any, record: SshRecord) -> list[Any]:
    """Every unix socket at the top of a pushed host directory (the LLM gateway's channel,
    an MCP channel) answers at the same place in the mirror for as long as this relay
    runs: a remote forward over this connection (tar cannot carry a socket). The agent's
    in-sandbox forwarder reaches the gateway through it, with no network."""
    asyncssh = load_asyncssh()
    listeners = []
    for mount in record.mounts:
        if mount.host is None:
            continue
        for name, path in await asyncio.to_thread(_sockets, mirror.host_dir(mount.host)):
            where = f"{mount.remote}/{name}"
            try:
                # A stale socket of an earlier run would make sshd's bind fail.
                await channel.run(conn, remote.plain(["rm", "-f", "--", where]), what="rm")
                listeners.append(await conn.forward_remote_path(where, path))
            except (HalError, OSError, asyncssh.Error, asyncssh.ChannelListenError) as exc:
                # The agent runs all the same; its calls through this socket will fail.
                _say(f"cannot forward {mount.target}/{name} to the ssh host ({exc}); its "
                     "sshd must allow remote forwarding (AllowTcpForwarding yes or remote)")
    return listeners


def _sockets(directory: Path) -> list[tuple[str, str]]:
    found = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    found.append((entry.name, entry.path))
    return found


async def _has_tmux(conn: Any) -> bool:
    code, _, _ = await channel.run(conn, remote.plain(["sh", "-c", session.HAS_TMUX]),
                                   what="looking for tmux")  # fmt: skip
    return code == 0


async def _copy_in(proc: Any) -> None:
    """Our stdin (a tmux pane, a pipe, /dev/null) to the command's. Read by a daemon thread:
    it may be a file the event loop cannot watch, and a blocked read must not hold the exit."""
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    feed_stdin(asyncio.get_running_loop(), chunks)
    with contextlib.suppress(OSError, BrokenPipeError):
        while data := await chunks.get():
            proc.stdin.write(data)
        proc.stdin.write_eof()


async def _copy_out(reader: Any, fd: int) -> None:
    with contextlib.suppress(Exception):
        while data := await reader.read(65536):
            await asyncio.to_thread(_write_all, fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _finish(proc: Any, outputs: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*outputs, return_exceptions=True)
    with contextlib.suppress(Exception):
        await proc.wait_closed()


def _say(text: str) -> None:
    # The relay's stderr is the agent's log (through the supervisor): one line, no traceback.
    sys.stderr.write(f"hal: {text}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point; the command's exit status (255: the connection failed)."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    saved: Any = None
    if sys.stdin.isatty() and not args.session:
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        return asyncio.run(relay(args))
    except HalError as exc:
        _say(exc.one_line())
        return 255
    except OSError as exc:
        _say(f"the ssh relay failed: {exc}")
        return 255
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


if __name__ == "__main__":
    sys.exit(main())
