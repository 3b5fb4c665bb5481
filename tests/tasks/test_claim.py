"""Two hal processes reaching a run of one task: the claim of its ``runner_pid`` is atomic,
and the process that loses it steps aside without writing, making or removing anything."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import (
    CREDENTIALS,
    DEAD_PID,
    credentialed,
    git_repo,
    make_task,
    pooled_service,
    trivial_request,
    until,
)

from hal9999.errors import TaskStateError
from hal9999.pool.settings import SchedulerSettings
from hal9999.providers.fake.provider import FakeProvider
from hal9999.store import Store
from hal9999.tasks.scheduler import Scheduler
from hal9999.tasks.session import Session


def live_hal() -> subprocess.Popen[bytes]:
    """A live process that ``runner_alive`` takes for a hal process (its command line names
    hal): the other runner."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "hal-other"])


@pytest.fixture
def other() -> Iterator[subprocess.Popen[bytes]]:
    proc = live_hal()
    yield proc
    proc.kill()
    proc.wait()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {
        str(path.relative_to(root)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
    }


def spy_creates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tasks the fake provider is asked to make a sandbox for."""
    created: list[str] = []
    real = FakeProvider.create

    async def create(self: FakeProvider, spec: Any) -> Any:
        created.append(spec.labels.get("hal.task", "?"))
        return await real(self, spec)

    monkeypatch.setattr(FakeProvider, "create", create)
    return created


async def test_a_run_that_loses_the_claim_writes_makes_and_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: subprocess.Popen[bytes]
) -> None:
    home = tmp_path / "home"
    store, service = credentialed(tmp_path, home)
    store.insert_task(make_task(home, "heldaaaa", "queued", runner_pid=other.pid))
    session = Session(home / "sessions" / "heldaaaa")
    installed = session.home / CREDENTIALS  # the winner's run installed it
    installed.parent.mkdir(parents=True)
    installed.write_text('{"token": "winner"}')
    created = spy_creates(monkeypatch)
    before, files = store.get_task("heldaaaa"), tree(session.root)

    with pytest.raises(TaskStateError, match=rf"another hal process \(pid {other.pid}\)"):
        await service.run("heldaaaa")

    assert store.get_task("heldaaaa") == before, "the loser wrote the task's row"
    assert tree(session.root) == files, "the loser touched the session"
    assert installed.read_text() == '{"token": "winner"}'
    assert created == [], "the loser made a sandbox"
    store.close()


async def test_a_daemon_that_loses_a_dispatched_task_drops_it_without_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: subprocess.Popen[bytes]
) -> None:
    # Dispatch saw the task free; another hal claims it before the run starts. The run is
    # placed on a provider other than the task's own: not even the placement is written.
    store, service, _, _ = pooled_service(tmp_path, "fake")
    limits = {"bwrap": 0, "fake": 4}
    settings = SchedulerSettings.model_validate({"backoff_base_s": 0.05})
    scheduler = Scheduler(service, settings, lambda name: limits.get(name, 0))
    store.insert_task(
        make_task(tmp_path, "raceaaaa", "queued", provider="bwrap", providers=["bwrap", "fake"])
    )
    created = spy_creates(monkeypatch)
    assert scheduler.dispatch() == 1
    taken = store.update_task("raceaaaa", runner_pid=other.pid)  # before the run's first step

    await until(lambda: not scheduler.running)

    assert store.get_task("raceaaaa") == taken
    assert created == [] and scheduler.placed == {} and scheduler.submissions == {}
    await scheduler.shutdown()
    store.close()


@pytest.mark.bwrap
async def test_a_task_is_refused_while_its_holder_lives_and_claimed_once_it_died(
    tmp_path: Path,
) -> None:
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    holder = live_hal()
    try:
        request = trivial_request(git_repo(tmp_path / "repo"), runner_pid=holder.pid)
        task = await service.create(request)
        with pytest.raises(TaskStateError, match="being run by another hal process"):
            await service.run(task.id)
    finally:
        holder.kill()
        holder.wait()
    # A crashed runner's task is anybody's: this one claims it and runs it to its end.
    done = await service.run(task.id)
    assert done.status == "succeeded", done.error_message
    assert done.runner_pid is None and done.sandbox_id is None
    store.close()


# Claims every task named on its command line, each at the same moment as the other
# claimer: both have read the holder and judged the task free before either writes.
CLAIMER = r"""
import json, sys, time
from pathlib import Path
from hal9999.errors import TaskStateError
from hal9999.store import Store
from hal9999.tasks.claim import claim

home, me, peer, ids = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")
store = Store.open(home)
swap = store.swap_runner

def together(task_id, seen, new):
    (home / f"{task_id}.{me}").touch()
    while not (home / f"{task_id}.{peer}").exists():
        time.sleep(0.001)
    return swap(task_id, seen, new)

store.swap_runner = together
won = []
for task_id in ids:
    try:
        won.append(claim(store, task_id).id)
    except TaskStateError:
        pass
print(json.dumps(won), flush=True)
sys.stdin.read()  # a live hal until the test has looked
"""


def test_of_two_processes_claiming_one_task_at_once_exactly_one_wins(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    ids = [f"race{n:04d}" for n in range(20)]
    for n, task_id in enumerate(ids):  # free, or held by a runner that died
        holder = DEAD_PID if n % 2 else None
        store.insert_task(make_task(tmp_path, task_id, "queued", runner_pid=holder))
    claimers = {
        name: subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(tmp_path), name, peer, ",".join(ids)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, peer in (("a", "b"), ("b", "a"))
    }
    try:
        won: dict[str, list[str]] = {}
        for name, proc in claimers.items():
            assert proc.stdout is not None
            won[name] = json.loads(proc.stdout.readline())
        assert sorted(won["a"] + won["b"]) == ids, won
        for name, proc in claimers.items():
            for task_id in won[name]:
                assert store.get_task(task_id).runner_pid == proc.pid
    finally:
        for proc in claimers.values():
            proc.communicate("")
    store.close()


@pytest.mark.bwrap
@pytest.mark.parametrize("when", ["before its end", "at its last write"])
async def test_a_stopped_run_leaves_the_resumed_runs_fields_and_credentials(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    other: subprocess.Popen[bytes],
    when: str,
) -> None:
    # Stopped, and at once resumed by another hal process (prepare_resume names it) while
    # this run still ends: the session's credential files and the task's runner_pid and
    # sandbox_id are the resumed run's, not this one's to clear.
    from hal9999.tasks.ending import RunEnding
    from hal9999.tasks.follow import RunFollower

    store, service = credentialed(tmp_path, tmp_path / "home")
    request = trivial_request(git_repo(tmp_path / "repo"))
    task = await service.create(request.model_copy(update={"agent": "sleep 30 {{prompt_file}}"}))
    installed = Session(Path(task.session_dir)).home / CREDENTIALS

    def resumed_elsewhere() -> None:
        store.update_task(task.id, status="queued", runner_pid=other.pid, sandbox_id="0123456789ab")
        installed.write_text('{"token": "theirs"}')  # the resumed run installed its own

    if when == "before its end":  # before the run reads who holds the task
        real_follow = RunFollower.follow

        async def follow(self: RunFollower, *args: Any, **kwargs: Any) -> Any:
            try:
                return await real_follow(self, *args, **kwargs)
            finally:
                resumed_elsewhere()

        monkeypatch.setattr(RunFollower, "follow", follow)
    else:  # after that read, before its last write
        real_release = RunEnding.release

        async def release(self: RunEnding, *args: Any, **kwargs: Any) -> None:
            await real_release(self, *args, **kwargs)
            resumed_elsewhere()

        monkeypatch.setattr(RunEnding, "release", release)

    run = asyncio.ensure_future(service.run(task.id))
    await until(lambda: store.get_task(task.id).status == "running")
    await service.stop(task.id)
    await asyncio.wait_for(run, 60)

    now = store.get_task(task.id)
    assert (now.runner_pid, now.sandbox_id) == (other.pid, "0123456789ab")
    assert installed.read_text() == '{"token": "theirs"}'
    store.close()


@pytest.mark.bwrap
async def test_a_run_whose_task_another_process_holds_since_its_agent_exited_leaves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: subprocess.Popen[bytes]
) -> None:
    # Stopped and resumed by another hal process after the agent's exit status was written
    # (a loaded host: the follower saw the exit before the stop): the step to collecting
    # finds the task queued by that process. This run leaves it alone (it raised
    # TaskStateError out of the run, and gave the sandbox back for reuse).
    from hal9999.tasks.ending import RunEnding
    from hal9999.tasks.follow import RunFollower

    store, service = credentialed(tmp_path, tmp_path / "home")
    task = await service.create(trivial_request(git_repo(tmp_path / "repo")))
    installed = Session(Path(task.session_dir)).home / CREDENTIALS
    real_follow = RunFollower.follow
    reused: list[bool] = []
    real_release = RunEnding.release

    async def follow(self: RunFollower, *args: Any, **kwargs: Any) -> Any:
        code = await real_follow(self, *args, **kwargs)
        store.update_task(task.id, status="queued", runner_pid=other.pid, sandbox_id="0123456789ab")
        installed.write_text('{"token": "theirs"}')
        return code

    async def release(self: RunEnding, *args: Any, reuse: bool = True) -> None:
        reused.append(reuse)
        await real_release(self, *args, reuse=reuse)

    monkeypatch.setattr(RunFollower, "follow", follow)
    monkeypatch.setattr(RunEnding, "release", release)
    done = await asyncio.wait_for(service.run(task.id), 60)

    assert (done.status, done.runner_pid, done.sandbox_id) == ("queued", other.pid, "0123456789ab")
    assert installed.read_text() == '{"token": "theirs"}'
    assert reused == [False]
    store.close()


def test_a_runs_last_write_keeps_its_fields_off_a_task_another_process_holds(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path)
    store.insert_task(make_task(tmp_path, "heldbbbb", "stopped", runner_pid=DEAD_PID + 1))
    me = DEAD_PID + 2
    kept = store.update_task(
        "heldbbbb", held_by=me, runner_pid=None, sandbox_id=None, agent_session_id="s1"
    )
    assert (kept.runner_pid, kept.agent_session_id) == (DEAD_PID + 1, "s1")
    assert store.get_task("heldbbbb") == kept
    store.update_task("heldbbbb", runner_pid=me)
    assert store.update_task("heldbbbb", held_by=me, runner_pid=None).runner_pid is None  # its own
    store.close()
