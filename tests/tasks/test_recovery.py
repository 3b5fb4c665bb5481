"""What a starting daemon does with tasks and sandboxes an earlier one left behind."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.support.tasks import DEAD_PID, make_task, pooled_service

from hal9999.errors import TaskStateError
from hal9999.events.models import Phase
from hal9999.events.reader import read_events
from hal9999.pool import SlotDir
from hal9999.process.base import ProcessStatus, arm_start
from hal9999.process.supervisor import mark_unstarted, unstarted_path
from hal9999.spec import SandboxSpec
from hal9999.store import SandboxRow, TaskRecord
from hal9999.tasks import recovery
from hal9999.tasks.recovery import Recovery
from hal9999.tasks.sandboxes import PoolSource
from hal9999.tasks.service import TaskService
from hal9999.tasks.session import Session


async def test_recovery_interrupts_requeues_and_sweeps(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    orphan = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "gone1234"}))
    held = await fake.create(SandboxSpec(provider="fake"))
    store.insert_task(make_task(home, "prep1234", "preparing", runner_pid=DEAD_PID,
                                sandbox_id=held.id))  # fmt: skip
    store.insert_task(make_task(home, "queu1234", "queued", runner_pid=DEAD_PID))
    # A foreground `hal run` elsewhere: alive, and "hal" is in its command line.
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", "hal"
    )
    store.insert_task(make_task(home, "live1234", "running", runner_pid=other.pid))
    now = time.time()
    store.put_sandbox(SandboxRow(provider="fake", id="0123456789ab", pool_key="fake:x",
                                 state="idle", created_at=now, last_used_at=now))  # fmt: skip
    (home / "pool" / "deadbeef0000").mkdir(parents=True)

    try:
        report, adoptions = await Recovery(service, pool, PoolSource(pool), lambda n: fake).run()
    finally:
        other.kill()
        await other.wait()

    assert adoptions == []
    prep = store.get_task("prep1234")
    assert prep.status == "interrupted" and prep.runner_pid is None and prep.sandbox_id is None
    assert "preparing" in (prep.error_message or "") and "resume" in (prep.error_message or "")
    phases = [e for e in read_events(Session(Path(prep.session_dir)).events) if e.type == "phase"]
    assert phases[-1].phase == "interrupted"  # type: ignore[union-attr]
    assert store.get_task("queu1234").runner_pid == os.getpid()
    assert report.requeued == ["queu1234"] and report.interrupted == ["prep1234"]
    assert "live1234" in report.left_alone, "a live runner elsewhere is left alone"
    assert {s.id for s in await fake.list()} == set(), "the orphan and the held sandbox are gone"
    assert f"fake:{orphan.id}" in report.orphans_destroyed
    assert report.gone == ["fake:0123456789ab"] and store.list_sandboxes() == []
    assert SlotDir(home / "pool").names() == set(), "stale slots are removed"
    # Interrupted means resumable.
    assert service.prepare_resume("prep1234").status == "queued"
    store.close()


async def test_recovery_that_loses_an_adoption_lets_go_of_the_sandbox_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemon starting while a `HAL_NO_DAEMON=1 hal task resume` adopts the same agent: the
    # resume claims the task first, so the daemon's pool must not keep the sandbox leased
    # (nor destroy it: the resume's run uses it).
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    box = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "adop1234"}))
    store.insert_task(make_task(home, "adop1234", "running", runner_pid=DEAD_PID,
                                sandbox_id=box.id))  # fmt: skip
    monkeypatch.setattr(recovery, "agent_status", running)
    monkeypatch.setattr(recovery, "adoption", lambda _s, _t, box: SimpleNamespace(sandbox=box))
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", "hal"
    )
    real_mark = Recovery.mark_adopted

    def resumed_first(self: Recovery, task: TaskRecord) -> TaskRecord:
        store.update_task(task.id, runner_pid=other.pid)  # the resume's claim
        return real_mark(self, task)

    monkeypatch.setattr(Recovery, "mark_adopted", resumed_first)
    source = PoolSource(pool)
    try:
        report, adoptions = await Recovery(service, pool, source, lambda n: fake).run()
    finally:
        other.kill()
        await other.wait()

    assert adoptions == [] and report.left_alone == ["adop1234"]
    assert source.leases == {} and pool.entries == [] and store.list_sandboxes() == []
    assert [s.id for s in await fake.list()] == [box.id], "the resume's sandbox lives on"
    assert store.get_task("adop1234").runner_pid == other.pid


async def running(service: TaskService, task: TaskRecord) -> ProcessStatus:
    """The agent of ``task`` as a live one (the recovery test above has no process)."""
    return ProcessStatus("running")


@pytest.mark.parametrize("status", ["interrupted", "running"])
async def test_recovery_leaves_a_task_a_resume_took_since_the_listing_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    # A daemon starting while `hal task resume` takes a task whose runner died (its agent
    # gone, nothing to adopt): the resume reconciles it to interrupted and claims it between
    # the recovery's listing and its cleaning. The recovery must neither clear the resume's
    # runner_pid nor destroy the sandbox the resume's run has.
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    box = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "took1234"}))
    store.insert_task(make_task(home, "took1234", status, runner_pid=DEAD_PID,
                                sandbox_id=box.id))  # fmt: skip
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", "hal"
    )

    async def resumed_meanwhile(self: Recovery, task: TaskRecord) -> None:
        if store.get_task(task.id).status != "interrupted":
            store.set_status(task.id, "interrupted", expect=task.status, runner_pid=None)
        store.update_task(task.id, runner_pid=other.pid)  # the resume's claim
        return None  # nothing to adopt

    monkeypatch.setattr(Recovery, "adoptable", resumed_meanwhile)
    try:
        report, adoptions = await Recovery(service, pool, PoolSource(pool), lambda n: fake).run()
    finally:
        other.kill()
        await other.wait()

    assert adoptions == [] and report.left_alone == ["took1234"] and report.interrupted == []
    assert store.get_task("took1234").runner_pid == other.pid
    assert [s.id for s in await fake.list()] == [box.id], "the resume's sandbox lives on"


async def test_the_sweep_leaves_the_sandbox_of_a_resume_that_took_the_task_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interrupted task whose sandbox is gone: the sweep forgets it. A `hal task resume`
    # claiming the task between the sweep's listing and its write has recorded its own
    # run's sandbox by then, which must stay recorded.
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    store.insert_task(make_task(home, "intr1234", "interrupted", sandbox_id="0123456789ab"))
    store.insert_task(make_task(home, "idle1234", "interrupted", sandbox_id="ba9876543210"))
    listed = store.list_tasks

    def list_then_resume(*args: object, **kwargs: object) -> list[TaskRecord]:
        tasks = listed(*args, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("status") == ["interrupted"]:
            store.update_task("intr1234", runner_pid=DEAD_PID, sandbox_id="resumed00000")
        return tasks

    monkeypatch.setattr(store, "list_tasks", list_then_resume)
    await Recovery(service, pool, PoolSource(pool), lambda n: fake).sweep(
        set(), recovery.RecoveryReport()
    )
    assert store.get_task("intr1234").sandbox_id == "resumed00000"
    assert store.get_task("idle1234").sandbox_id is None, "a gone sandbox is still forgotten"
    store.close()


def phase_steps(task: TaskRecord) -> list[tuple[str | None, str]]:
    """The task's phase changes, (previous, phase), from its event log."""
    events = read_events(Session(Path(task.session_dir)).events)
    return [(e.previous, e.phase) for e in events if isinstance(e, Phase)]


async def test_a_collecting_task_is_adopted_when_its_sandbox_lives_and_interrupted_if_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its agent has ended: with its sandbox it is collected again (never run again);
    # without, it is interrupted (resumable) like any other task in flight.
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    box = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "coll1234"}))
    store.insert_task(make_task(home, "coll1234", "collecting", runner_pid=DEAD_PID,
                                sandbox_id=box.id))  # fmt: skip
    store.insert_task(make_task(home, "gone1234", "collecting", runner_pid=DEAD_PID,
                                sandbox_id="0123456789ab"))  # fmt: skip

    async def ended(service: TaskService, task: TaskRecord) -> ProcessStatus:
        return ProcessStatus("exited", 0)

    monkeypatch.setattr(recovery, "agent_status", ended)
    monkeypatch.setattr(recovery, "adoption", lambda _s, _t, box: SimpleNamespace(sandbox=box))
    report, adoptions = await Recovery(service, pool, PoolSource(pool), lambda n: fake).run()

    assert [task.id for task, _ in adoptions] == ["coll1234"] and report.adopted == ["coll1234"]
    adopted = store.get_task("coll1234")
    assert adopted.status == "running" and adopted.runner_pid == os.getpid()
    assert phase_steps(adopted) == [
        ("collecting", "interrupted"),
        ("interrupted", "running"),
    ]
    gone = store.get_task("gone1234")
    assert report.interrupted == ["gone1234"]
    assert gone.status == "interrupted" and gone.runner_pid is None and gone.sandbox_id is None
    assert "collecting" in (gone.error_message or "")
    assert [s.id for s in await fake.list()] == [box.id]
    store.close()


async def test_a_task_whose_agent_had_not_started_is_queued_again_up_to_the_retries(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    box = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "prov1234"}))
    store.insert_task(make_task(home, "prov1234", "provisioning", runner_pid=DEAD_PID,
                                sandbox_id=box.id))  # fmt: skip
    store.insert_task(make_task(home, "prep1234", "preparing", runner_pid=DEAD_PID,
                                infra_retries=1))  # fmt: skip
    store.insert_task(make_task(home, "runs1234", "running", runner_pid=DEAD_PID))
    recovering = Recovery(service, pool, PoolSource(pool), lambda n: fake, retries=1)
    report, adoptions = await recovering.run()

    assert adoptions == [] and report.requeued == ["prov1234"]
    assert sorted(report.interrupted) == ["prep1234", "runs1234"]
    again = store.get_task("prov1234")
    assert again.status == "queued" and again.runner_pid == os.getpid()
    assert again.infra_retries == 1 and again.error_code is None and again.sandbox_id is None
    assert phase_steps(again) == [
        ("provisioning", "interrupted"),
        ("interrupted", "queued"),
    ]
    assert await fake.list() == [], "its sandbox went with the interruption"
    spent = store.get_task("prep1234")
    assert spent.status == "interrupted" and spent.infra_retries == 1, "its retries are spent"
    assert store.get_task("runs1234").status == "interrupted", "its agent had started"
    store.close()


async def test_a_running_task_whose_supervisor_never_got_its_start_is_queued_again(
    tmp_path: Path,
) -> None:
    # Its runner killed -9 after `running` and before the supervisor's `g`: the supervisor
    # left its marker (no exit status); another's agent had started (no marker).
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    for task_id in ("nogo1234", "runs1234"):
        store.insert_task(make_task(home, task_id, "running", runner_pid=DEAD_PID))
    exit_file = Session(home / "sessions" / "nogo1234").exit_file(0)
    exit_file.parent.mkdir(parents=True, exist_ok=True)
    mark_unstarted(str(exit_file))
    recovering = Recovery(service, pool, PoolSource(pool), lambda n: fake, retries=1)
    report, adoptions = await recovering.run()

    assert adoptions == [] and report.requeued == ["nogo1234"]
    assert report.interrupted == ["runs1234"]
    again = store.get_task("nogo1234")
    assert again.status == "queued" and again.runner_pid == os.getpid()
    assert again.infra_retries == 1 and again.exit_code is None
    assert phase_steps(again) == [("running", "interrupted"), ("interrupted", "queued")]
    assert store.get_task("runs1234").status == "interrupted", "its agent had started"
    # Said plainly by a `hal` that reconciles it without a daemon (no retry there).
    store.insert_task(make_task(home, "cli01234", "running", runner_pid=DEAD_PID))
    exit_file = Session(home / "sessions" / "cli01234").exit_file(0)
    exit_file.parent.mkdir(parents=True, exist_ok=True)
    mark_unstarted(str(exit_file))
    told = service.reconcile(store.get_task("cli01234"))
    assert told.status == "interrupted"
    assert "the agent had not started" in (told.error_message or "")
    store.close()


async def test_a_run_no_supervisor_took_is_queued_again_and_taken(tmp_path: Path) -> None:
    # Direct and PM2: hal marks the start before `running`, its
    # supervisor takes the mark just before the agent starts. A runner killed -9 between
    # leaves it: the next daemon takes it (a supervisor coming later starts nothing) and
    # queues the task again, also when a `hal` reconciled the task `interrupted` before
    # that daemon came; one whose supervisor took it (its agent started) stays interrupted.
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    for task_id in ("armd1234", "took1234", "seen1234"):
        store.insert_task(make_task(home, task_id, "running", runner_pid=DEAD_PID))
    marks: dict[str, Path] = {}
    for task_id in ("armd1234", "took1234", "seen1234"):
        exit_file = Session(home / "sessions" / task_id).exit_file(0)
        exit_file.parent.mkdir(parents=True, exist_ok=True)
        arm_start(exit_file)
        marks[task_id] = Path(unstarted_path(exit_file))
    marks["took1234"].unlink()  # its supervisor's take
    told = service.reconcile(store.get_task("seen1234"))
    assert told.status == "interrupted" and "had not started" in (told.error_message or "")
    assert marks["seen1234"].exists(), "a hal's look takes nothing"
    report, adoptions = await Recovery(
        service, pool, PoolSource(pool), lambda n: fake, retries=1
    ).run()

    assert adoptions == [] and sorted(report.requeued) == ["armd1234", "seen1234"]
    assert report.interrupted == ["took1234"]
    for task_id in ("armd1234", "seen1234"):
        again = store.get_task(task_id)
        assert again.status == "queued" and again.infra_retries == 1
        assert not marks[task_id].exists(), "taken: a late supervisor starts nothing"
    assert store.get_task("took1234").status == "interrupted", "its agent had started"
    store.close()


async def test_a_queued_task_whose_daemon_died_stays_queued_until_the_next_one(
    tmp_path: Path,
) -> None:
    """A retry a crashed daemon had queued (or any task it had queued) waits for the next
    daemon: a `hal task list` in between used to mark it interrupted, and the next daemon
    then left it there."""
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    store.insert_task(
        make_task(home, "retr1234", "queued", runner_pid=DEAD_PID, infra_retries=1,
                  not_before=time.time() + 30)
    )  # fmt: skip
    assert [t.status for t in service.list()] == ["queued"]
    assert service.find("retr").status == "queued" and store.get_task("retr1234").error_code is None
    report, _ = await Recovery(service, pool, PoolSource(pool), lambda n: fake).run()
    assert report.requeued == ["retr1234"] and report.interrupted == []
    again = store.get_task("retr1234")
    assert again.status == "queued" and again.runner_pid == os.getpid()
    assert again.infra_retries == 1, "waiting was not a failure: no retry is spent"
    store.close()


def test_a_queued_task_no_live_hal_holds_is_resumed_here(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store, service, _, _ = pooled_service(home, "fake")
    store.insert_task(make_task(home, "orph1234", "queued", runner_pid=DEAD_PID))
    store.insert_task(make_task(home, "mine1234", "queued", runner_pid=os.getpid()))
    named: list[str] = []
    taken = service.prepare_resume("orph", named.append)
    assert named == ["orph1234"]
    assert taken.status == "queued" and taken.runner_pid == os.getpid()
    assert taken.resumes == 0, "it never ran: the same run is started, not a new one"
    # One this process holds is already on its way: not a second time.
    with pytest.raises(TaskStateError, match="is queued"):
        service.prepare_resume("mine1234")
    store.close()


async def test_a_queued_task_another_live_hal_holds_is_not_resumed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store, service, _, _ = pooled_service(home, "fake")
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", "hal"
    )
    try:
        store.insert_task(make_task(home, "held1234", "queued", runner_pid=other.pid))
        with pytest.raises(TaskStateError, match=f"another hal process \\(pid {other.pid}\\)"):
            await asyncio.to_thread(service.prepare_resume, "held1234")
        assert store.get_task("held1234").runner_pid == other.pid
    finally:
        other.kill()
        await other.wait()
    store.close()


async def test_the_sweep_keeps_the_sandbox_of_a_foreground_run_that_began_after_the_listing(
    tmp_path: Path,
) -> None:
    # A foreground `hal run` records its task, then creates its sandbox labelled with it; a
    # daemon starting up meanwhile listed the tasks before that record existed. Its sweep
    # must not take the sandbox as an orphan: the run is alive in another process.
    home = tmp_path / "home"
    store, service, fake, pool = pooled_service(home, "fake")
    recovering = Recovery(service, pool, PoolSource(pool), lambda n: fake)
    report, _ = await recovering.run()  # the listing: no task yet
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", "hal"
    )
    try:
        store.insert_task(make_task(home, "late1234", "provisioning", runner_pid=other.pid))
        late = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "late1234"}))
        dead = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "dead1234"}))
        store.insert_task(make_task(home, "dead1234", "provisioning", runner_pid=DEAD_PID))
        stray = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "none1234"}))
        await recovering.sweep(set(), report)
    finally:
        other.kill()
        await other.wait()
    assert {s.id for s in await fake.list()} == {late.id}
    assert sorted(report.orphans_destroyed) == sorted([f"fake:{dead.id}", f"fake:{stray.id}"])
    store.close()
