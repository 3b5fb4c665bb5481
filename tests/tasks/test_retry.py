"""A failure the daemon retries is queued again in the write that ends its run: ``failed``
is only ever written when it is final, so a daemon killed right after that write leaves a
task its recovery queues and runs again (it used to leave it ``failed`` for good)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import LeftNothing
from tests.support.tasks import ScriptedService, git_repo, make_task, pooled_service, until

from hal9999.events.models import Phase, TaskEnd
from hal9999.events.reader import read_events
from hal9999.pool import WarmPool
from hal9999.pool.settings import SchedulerSettings
from hal9999.store import Store, TaskRecord
from hal9999.tasks.recovery import Recovery
from hal9999.tasks.request import RunRequest
from hal9999.tasks.sandboxes import PoolSource
from hal9999.tasks.scheduler import Scheduler
from hal9999.tasks.service import TaskService
from hal9999.tasks.session import Session

SETTINGS = SchedulerSettings(backoff_base_s=0.05)

# The daemon's scheduler and runner in a process of their own, killed (SIGKILL) right
# after the store write that ends the task's first run: nothing after it happens.
DAEMON_KILLED_AT_THE_RUNS_END = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from hal9999.config import HalConfig
    from hal9999.pool.settings import SchedulerSettings
    from hal9999.store import Store
    from hal9999.tasks.scheduler import Scheduler
    from hal9999.tasks.service import TaskService

    IN_FLIGHT = {"provisioning", "preparing", "running", "collecting"}
    home, task_id = Path(sys.argv[1]), sys.argv[2]
    real = Store.set_status

    def set_status(self, task_id, target, *, expect, **fields):
        record = real(self, task_id, target, expect=expect, **fields)
        if record is not None and expect in IN_FLIGHT and target not in IN_FLIGHT:
            os.kill(os.getpid(), signal.SIGKILL)
        return record

    Store.set_status = set_status

    async def main():
        service = TaskService(HalConfig(home=home), Store.open(home), {})
        settings = SchedulerSettings(backoff_base_s=0.05)
        scheduler = Scheduler(service, settings, lambda name: 4)
        scheduler.submit(task_id)
        await asyncio.wait_for(scheduler.run_forever(), 120)

    asyncio.run(main())
    """
)


def failing_request(repo: Path) -> RunRequest:
    """An agent that always exits 3, given one retry (`--retries 1`)."""
    return RunRequest(
        prompt="p", repo=str(repo), ref=None, agent="sh -c 'exit 3'", provider="bwrap",
        process_manager="direct", timeout_s=60, retries=1,
    )  # fmt: skip


def phases(task: TaskRecord) -> list[tuple[str, str | None]]:
    """The task's phase and task_end events: (phase or ``end:<status>``, detail)."""
    seen: list[tuple[str, str | None]] = []
    for event in read_events(Session(Path(task.session_dir)).events):
        if isinstance(event, Phase):
            seen.append((event.phase, event.detail))
        elif isinstance(event, TaskEnd):
            seen.append((f"end:{event.status}", event.error_code))
    return seen


async def until_failed(
    service: TaskService, store: Store, pool: WarmPool, task_id: str, *, submit: bool = False
) -> None:
    """A daemon's scheduler over ``pool`` (given ``task_id`` when ``submit``) until the task
    is ``failed`` and nothing runs; then the scheduler and the pool are shut down."""
    scheduler = Scheduler(service, SETTINGS, lambda name: 4)
    if submit:
        scheduler.submit(task_id)
    loop = asyncio.create_task(scheduler.run_forever())
    try:
        await until(lambda: store.get_task(task_id).status == "failed", timeout=120)
        await until(lambda: not scheduler.running)
    finally:
        await scheduler.shutdown()
        loop.cancel()
        await pool.drain()  # as the daemon's stop: no warm sandbox's keeper outlives the test
        await pool.close()


@pytest.mark.bwrap
async def test_a_retry_survives_the_daemon_killed_right_after_the_failing_write(
    tmp_path: Path, left_nothing: LeftNothing
) -> None:
    home = tmp_path / "home"
    left_nothing(home, {**os.environ, "HAL_HOME": str(home)})  # the killed one's keeper
    store, service, bwrap, pool = pooled_service(home, "bwrap")
    task = await service.create(failing_request(git_repo(tmp_path / "repo")))
    daemon = subprocess.run(
        [sys.executable, "-c", DAEMON_KILLED_AT_THE_RUNS_END, str(home), task.id],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert daemon.returncode == -signal.SIGKILL, daemon.stderr
    # The first run's end is the only thing written: the task is owed its retry, and says so.
    left = store.get_task(task.id)
    assert (left.status, left.agent_retries) == ("queued", 1), left
    assert left.not_before is not None and left.sandbox_id is None

    # The next daemon: recovery, then the scheduler with the same pool.
    service.runner.sandboxes = PoolSource(pool)
    recovery = Recovery(service, pool, PoolSource(pool), lambda name: bwrap, retries=5)
    report, adoptions = await recovery.run()
    assert report.requeued == [task.id] and adoptions == []
    await until_failed(service, store, pool, task.id)
    done = store.get_task(task.id)
    assert (done.agent_retries, done.error_code, done.exit_code) == (1, "agent_failed", 3)
    assert [p for p, _ in phases(done)].count("running") == 2, "the retry ran"
    assert phases(done)[-2:] == [("failed", None), ("end:failed", "agent_failed")]
    store.close()


@pytest.mark.bwrap
async def test_a_retried_failure_is_never_written_failed_and_its_events_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left_nothing: LeftNothing
) -> None:
    home = tmp_path / "home"
    left_nothing(home, {**os.environ, "HAL_HOME": str(home)})
    store, service, _bwrap, pool = pooled_service(home, "bwrap")
    service.runner.sandboxes = PoolSource(pool)
    writes: list[str] = []
    real = Store.set_status

    def recorded(self: Store, task_id: str, target: str, **kwargs: Any) -> Any:
        record = real(self, task_id, target, **kwargs)
        if record is not None:
            writes.append(target)
        return record

    monkeypatch.setattr(Store, "set_status", recorded)
    task = await service.create(failing_request(git_repo(tmp_path / "repo")))
    await until_failed(service, store, pool, task.id, submit=True)
    run = ["provisioning", "preparing", "running", "collecting"]
    assert writes == [*run, "queued", *run, "failed"], "failed written once: when final"
    seen = phases(store.get_task(task.id))
    first_end = seen.index(("end:failed", "agent_failed"))
    # As before: the run's failure, its end, then the retry (what a reader follows).
    assert seen[first_end - 1] == ("failed", None)
    phase, detail = seen[first_end + 1]
    assert phase == "queued" and (detail or "").startswith("retry 1 in ")
    assert "exited with status 3" in (detail or "")
    assert seen[-2:] == [("failed", None), ("end:failed", "agent_failed")]
    store.close()


async def test_a_retryable_failure_while_the_daemon_stops_is_queued_for_the_next(
    tmp_path: Path,
) -> None:
    # A graceful stop leaves it queued, as a kill would: the next `hal serve` runs it.
    with Store.open(tmp_path) as store:
        scheduler = Scheduler(ScriptedService(store), SETTINGS, lambda name: 4)  # type: ignore[arg-type]
        await scheduler.shutdown()
        failed = make_task(tmp_path, "stopaaaa", "failed", error_code="provider_error")
        retry = scheduler.retry(failed)
        assert retry is not None and retry.counters == {"infra_retries": 1}
        assert retry.fields(time.time())["runner_pid"] == os.getpid()
        assert scheduler.retry(failed.model_copy(update={"error_code": "config_error"})) is None
