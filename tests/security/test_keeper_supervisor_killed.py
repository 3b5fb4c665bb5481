"""A task's whole tree in a keeper's sandbox (``hal-launch --enter``) dies with its killed
supervisor: the launcher outside is the PID namespace's monitor, and nothing tied it to the
supervisor, so a ``kill -9`` of that left the agent and its children running
(tests/process/test_supervisor_killed.py has the local provider)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path

import pytest
from tests.support.keeper import kept
from tests.support.process import spec_for, supervisor_pid

from hal9999.process.base import ProcessManager
from hal9999.process.direct import DirectProcessManager
from hal9999.process.tmux import TmuxProcessManager
from hal9999.providers.bwrap.provider import BwrapProvider
from hal9999.spec import ShellCommand

pytestmark = pytest.mark.bwrap


def running(*argv: bytes) -> list[int]:
    """The host pids whose command line is ``argv``."""
    wanted = b"\0".join(argv) + b"\0"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == wanted:
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize(
    "manager", [pytest.param(TmuxProcessManager(), marks=pytest.mark.tmux, id="tmux"),
                pytest.param(DirectProcessManager(), id="direct")],
)  # fmt: skip
async def test_the_whole_tree_dies_with_its_killed_supervisor(
    manager: ProcessManager, provider: BwrapProvider, tmp_path: Path
) -> None:
    box = await kept(provider, tmp_path)
    # Unique arguments: the tree's pids inside are its own namespace's. Random, not from this
    # process's pid: two workers' pids can agree modulo anything, and the sweep at the end
    # kills every process with these arguments.
    token = str(10**8 + secrets.randbelow(9 * 10**8))
    child, agent = (b"sleep", f"{token}1".encode()), (b"sleep", f"{token}2".encode())
    spec = spec_for(tmp_path / "run", ShellCommand(script=f"sleep {token}1 & sleep {token}2"))
    await manager.start(box, spec)
    try:
        deadline = time.monotonic() + 30
        while not (running(*child) and running(*agent)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert running(*child) and running(*agent)
        supervisor = supervisor_pid(manager, spec)
        assert supervisor is not None
        os.kill(supervisor, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (running(*child) or running(*agent)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not running(*child) and not running(*agent), "the tree outlived its supervisor"
    finally:
        await manager.stop(spec)
        for pid in running(*child) + running(*agent):  # failed: leave nothing running
            os.kill(pid, signal.SIGKILL)
