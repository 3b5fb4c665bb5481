"""tmux and direct honour a spec's restart policy as PM2 does (tests/process/test_pm2.py): a
failed run (a death by signal n is 128+n) runs again up to ``max_restarts`` times, at once;
a success or a stop ends it; the exit status, written once, is the last run's. Before stop
43 both ran every process once, whatever its policy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tests.support.pm2 import failing_runs, runs, spec_for

from hal9999.process.base import ProcessManager, ProcessStatus
from hal9999.providers.base import Sandbox
from hal9999.spec import RestartPolicy

pytestmark = pytest.mark.timeout(120)


async def ended(manager: ProcessManager, spec: object, timeout: float = 30) -> ProcessStatus:
    deadline = time.monotonic() + timeout
    status = await manager.status(spec)  # type: ignore[arg-type]
    while status.state == "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status = await manager.status(spec)  # type: ignore[arg-type]
    return status


async def test_a_failed_run_is_restarted_max_restarts_times(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    counter, spec = failing_runs(tmp_path, 3)
    await manager.start(sandbox, spec)
    try:
        assert await runs(counter, 2) == 2, "the first run and one restart"
        # The second run sleeps: the first one's status was not written, the run goes on.
        assert not spec.exit_path.exists() and (await manager.status(spec)).state == "running"
        assert await ended(manager, spec) == ProcessStatus("exited", 3)
        assert len(counter.read_text().splitlines()) == 2
    finally:
        await manager.stop(spec)


@pytest.mark.parametrize(
    ("script", "policy", "count", "status"),
    [("exit 3", RestartPolicy(), 1, 3),
     ("exit 0", RestartPolicy(mode="on-failure", max_restarts=2), 1, 0),
     ("kill -KILL $$", RestartPolicy(mode="on-failure", max_restarts=2), 3, 137)],
    ids=["never", "a-success", "killed-by-a-signal"],
)  # fmt: skip
async def test_the_policy_and_the_status(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path,
    script: str, policy: RestartPolicy, count: int, status: int,
) -> None:  # fmt: skip
    counter = tmp_path / "runs"
    spec = spec_for(tmp_path, f"echo run >> {counter}; {script}", policy)
    await manager.start(sandbox, spec)
    try:
        assert await ended(manager, spec) == ProcessStatus("exited", status)
        assert len(counter.read_text().splitlines()) == count
    finally:
        await manager.stop(spec)


async def test_a_stop_ends_the_restarts(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    counter, spec = failing_runs(tmp_path, 30)
    await manager.start(sandbox, spec)
    try:
        assert await runs(counter, 1) == 1
    finally:
        await manager.stop(spec)
    assert (await manager.status(spec)).state != "running"
    assert len(counter.read_text().splitlines()) == 1, "a stopped run is not restarted"
