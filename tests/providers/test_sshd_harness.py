"""The test sshd (tests/sshd.py) itself: servers alive at once (this session's, another test
session's on the same machine) never touch each other's connections."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from tests import sshd
from tests.sshd import Sshd, running_sshd

from hal9999.providers.ssh.config import SshHost
from hal9999.providers.ssh.connections import connect

pytestmark = [pytest.mark.ssh]


def _host(server: Sshd) -> SshHost:
    return SshHost.model_validate(server.host_entry())


def _uid_processes(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_a_finished_server_leaves_another_servers_connections_alone(
    sshd_server: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen under load in CI: another session's server finishing killed this one's sshd
    # connection process (both ran as one test user), so a command lost its exit status
    # (the relay's 255, "connection lost") or a push was reset mid-stream.
    conn = await connect(_host(sshd_server), limit_s=30, keepalive=5)
    try:
        proc = await conn.create_process("read x; echo got $x")
        with contextlib.ExitStack() as stack:
            other = await asyncio.to_thread(stack.enter_context, running_sshd())
            # Its uid is taken while it lives, even with no connection (no process of it).
            monkeypatch.setattr(sshd, "UIDS", range(other.uid, other.uid + 2))
            assert {sshd._free_uid() for _ in range(20)} == {other.uid + 1}
            monkeypatch.undo()
            # A process of the other server's user that left its connection's tree.
            other_conn = await connect(_host(other), limit_s=30, keepalive=5)
            stray = "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo started"
            assert (await other_conn.run(stray)).stdout == "started\n"
            other_conn.close()
            await asyncio.to_thread(stack.close)
        # What the other server's user ran went too (killed: gone once reaped).
        deadline = time.monotonic() + 10
        while _uid_processes(other.uid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _uid_processes(other.uid) == []
        proc.stdin.write("hi\n")
        await asyncio.wait_for(proc.wait_closed(), 30)
        assert (proc.exit_status, await proc.stdout.read()) == (0, "got hi\n")
        alive = await asyncio.wait_for(conn.run("echo alive"), 30)
        assert (alive.exit_status, alive.stdout) == (0, "alive\n")
    finally:
        conn.close()
        await conn.wait_closed()
