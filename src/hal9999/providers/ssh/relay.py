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
import sys
import termios
import tty
from typing import Any

from hal9999 import unixsock
from hal9999.errors import HalError
from hal9999.hostread import write_all
from hal9999.process.tmux import verbatim
from hal9999.providers.host.exec import EXEC_MARKER_VAR
from hal9999.providers.remote import relay as relaycore
from hal9999.providers.remote.stdin import stdin_chunks
from hal9999.providers.ssh import channel, mirror, remote, session
from hal9999.providers.ssh.connections import ConnectionPool, load_asyncssh
from hal9999.providers.ssh.records import SshRecord, SshRecords
from hal9999.providers.ssh.sandbox import SshSandbox


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = relaycore.arguments("hal-ssh-relay")
    parser.add_argument(
        "--session",
        action="store_true",
        help="hold the run in a tmux session on the host (see .session)",
    )
    return parser.parse_args(argv)


async def relay(args: argparse.Namespace) -> int:
    """Run the command; its exit status."""
    records = SshRecords(args.records)
    record = records.load(args.id)
    pool = ConnectionPool(timeout=30, keepalive=5)
    sandbox = SshSandbox(record, pool, records)
    run = _SshRun(sandbox, record, pool, in_session=args.session)
    try:
        await sandbox.push(writable=False)
        return await relaycore.follow(run.run(args), pull=sandbox.pull,
                                      every=record.checkpoint_s, stopped=run.kill)  # fmt: skip
    finally:
        await pool.close()


class _SshRun:
    """The command on the host: started, followed to its end, killed by its marker."""

    def __init__(self, sandbox: SshSandbox, record: SshRecord, pool: ConnectionPool,
                 *, in_session: bool) -> None:  # fmt: skip
        self.sandbox, self.record, self.pool = sandbox, record, pool
        self.in_session = in_session
        self.token = secrets.token_hex(8)

    async def run(self, args: argparse.Namespace) -> int:
        """Start the command and follow it; its exit status (255: the connection was lost)."""
        record, sandbox = self.record, self.sandbox
        env = relaycore.env_of(args)
        command = relaycore.command_of(args)
        env[EXEC_MARKER_VAR] = self.token
        conn = await self.pool.get(record.host)
        listeners = await _forward_sockets(conn, record)
        line = remote.env_line(env)
        in_tmux = self.in_session and await _has_tmux(conn)
        interactive = sys.stdin.isatty() and not in_tmux
        if in_tmux:
            # The run lives in a tmux session on the host (what `hal task attach` opens);
            # the relay follows its output. The command gets the remote pane as its terminal.
            argv = ["sh", "-c", session.START, "hal-session",
                    session.run_dir(record.root, self.token), session.PANE,
                    *map(verbatim, sandbox.remote_argv(command, tty=False))]  # fmt: skip
        else:
            argv = sandbox.remote_argv(command, tty=interactive)
        size = os.get_terminal_size(0) if interactive else None
        proc: Any = None
        pumps: list[asyncio.Task[None]] = []
        try:
            proc = await conn.create_process(
                remote.wrapped(argv),
                encoding=None,
                term_type=os.environ.get("TERM", "xterm-256color") if interactive else None,
                term_size=(size.columns, size.lines) if size else None,
            )
            pumps += [
                asyncio.create_task(_copy_out(proc.stdout, 1)),
                asyncio.create_task(_copy_out(proc.stderr, 2)),
            ]
            proc.stdin.write(line)
            if in_tmux:
                proc.stdin.write_eof()
            else:
                pumps.append(asyncio.create_task(_copy_in(proc)))
            await _finish(proc, pumps[:2])
            if proc.exit_status is None and not proc.exit_signal:
                # A run held in tmux outlives a lost connection: a new one ends it (the
                # task fails clearly rather than an agent running on unseen).
                await self.kill(lost=True)
                relaycore.say(f"the ssh connection to {record.host.name} was lost; the hal "
                              "host keeps the work of the last checkpoint")  # fmt: skip
                return relaycore.LOST
            return channel.exit_code(proc)
        finally:
            for task in pumps:
                task.cancel()
            for listener in listeners:
                listener.close()
            if proc is not None:
                proc.close()

    async def kill(self, *, lost: bool = False) -> None:
        """Kill the command's processes on the host by their marker, over a fresh
        connection when the old one is ``lost`` (it may not know it yet: keepalives take
        seconds)."""
        self.pool.forget_name(self.record.host.name, force=lost)
        with contextlib.suppress(HalError, TimeoutError):
            async with asyncio.timeout(relaycore.KILL_S):
                conn = await self.pool.get(self.record.host)
                await channel.kill_marked(conn, EXEC_MARKER_VAR, self.token)
                await channel.kill_marked(conn, EXEC_MARKER_VAR, session.inner_token(self.token))


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
        for name, path in await asyncio.to_thread(mirror.sockets_in, mirror.host_dir(mount.host)):
            where = f"{mount.remote}/{name}"
            try:
                # A stale socket of an earlier run would make sshd's bind fail.
                await channel.run(conn, remote.plain(["rm", "-f", "--", where]), what="rm")
                listeners.append(await conn.forward_remote_path(where, unixsock.held(path)))
            except (HalError, OSError, asyncssh.Error, asyncssh.ChannelListenError) as exc:
                # The agent runs all the same; its calls through this socket will fail.
                relaycore.say(
                    f"cannot forward {mount.target}/{name} to the ssh host ({exc}); its "
                    "sshd must allow remote forwarding (AllowTcpForwarding yes or remote)"
                )
    return listeners


async def _has_tmux(conn: Any) -> bool:
    code, _, _ = await channel.run(conn, remote.plain(["sh", "-c", session.HAS_TMUX]),
                                   what="looking for tmux")  # fmt: skip
    return code == 0


async def _copy_in(proc: Any) -> None:
    """Our stdin (a tmux pane, a pipe, /dev/null) to the command's."""
    with contextlib.suppress(OSError, BrokenPipeError):
        async for data in stdin_chunks():
            proc.stdin.write(data)
        proc.stdin.write_eof()


async def _copy_out(reader: Any, fd: int) -> None:
    with contextlib.suppress(Exception):
        while data := await reader.read(65536):
            await asyncio.to_thread(write_all, fd, data)


async def _finish(proc: Any, outputs: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*outputs, return_exceptions=True)
    with contextlib.suppress(Exception):
        await proc.wait_closed()


def main(argv: list[str] | None = None) -> int:
    """Entry point; the command's exit status (255: the connection failed)."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    saved: Any = None
    if sys.stdin.isatty() and not args.session:
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        return relaycore.run_main(lambda: asyncio.run(relay(args)), "ssh")
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


if __name__ == "__main__":
    sys.exit(main())
