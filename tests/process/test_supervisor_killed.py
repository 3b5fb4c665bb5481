"""A supervisor that is killed (``kill -9``, the OOM killer) takes its command with it, under
tmux and direct alike: the command, in a session of its own, lived on unseen."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from tests.support.process import spec_for, supervisor_pid

from hal9999 import procs
from hal9999.process.base import ProcessManager
from hal9999.providers.base import Sandbox
from hal9999.providers.host.exec import dies_with_helper
from hal9999.spec import ShellCommand

pytestmark = pytest.mark.skipif(
    dies_with_helper() is None, reason="needs the static launcher (scripts/setup.sh)"
)


async def until(check: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.05)


async def test_the_command_dies_with_its_killed_supervisor(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # Twice: direct's second run in a process is forked by its fork server.
    for run in ("first", "second"):
        marker = tmp_path / run / "agent-pid"
        marker.parent.mkdir()
        script = f"echo $$ > {marker}; exec sleep 300"
        spec = spec_for(tmp_path / run, ShellCommand(script=script))
        await manager.start(sandbox, spec)
        agent = 0
        try:
            await until(lambda m=marker: m.exists() and m.read_text().strip())
            agent = int(marker.read_text())
            supervisor = supervisor_pid(manager, spec)
            assert supervisor is not None and procs.started(agent) is not None
            os.kill(supervisor, signal.SIGKILL)
            await until(lambda a=agent: procs.started(a) is None)
            assert procs.started(agent) is None, f"the {run} agent outlived its supervisor"
            assert (await manager.status(spec)).state == "missing"  # no exit status
        finally:
            await manager.stop(spec)
            if agent and procs.started(agent) is not None:  # failed: leave nothing running
                os.kill(agent, signal.SIGKILL)
