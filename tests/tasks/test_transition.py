"""The one transition function: the table, compare-and-set, the phase event, durability, and
a cancel racing a finish from two processes (neither may be lost)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import make_task

from hal9999.errors import TaskStateError
from hal9999.events.log import EventLog
from hal9999.events.models import Phase
from hal9999.events.reader import read_events
from hal9999.store import Store
from hal9999.tasks.state import TaskStatus, transition


def test_transition_writes_status_fields_and_the_phase_event(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.insert_task(make_task(tmp_path, "t1", "running"))
        with EventLog(tmp_path / "e.jsonl", "t1", store=store) as log:
            before, after = transition(
                store, log, "t1", TaskStatus.COLLECTING, expect="running", detail="done"
            )
        assert (before, after.status) == ("running", "collecting")
        assert store.get_task("t1").status == "collecting"
        (event,) = read_events(tmp_path / "e.jsonl")
        assert isinstance(event, Phase)
        assert (event.phase, event.previous, event.detail) == ("collecting", "running", "done")


def test_transition_refuses_moves_outside_the_table_and_unexpected_states(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path) as store:
        store.insert_task(make_task(tmp_path, "t1", "succeeded"))
        with pytest.raises(TaskStateError, match="cannot become running"):
            transition(store, None, "t1", TaskStatus.RUNNING)
        with pytest.raises(TaskStateError, match="is succeeded, not collecting"):
            transition(store, None, "t1", TaskStatus.FAILED, expect="collecting")
        assert store.get_task("t1").status == "succeeded"


def test_a_move_via_a_state_checks_both_legs_and_writes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed run queued again for its retry: `failed` is never written on its own (a
    # process killed after it would leave a retry owed by a final-looking task).
    with Store.open(tmp_path) as store:
        store.insert_task(make_task(tmp_path, "t1", "collecting"))
        store.insert_task(make_task(tmp_path, "t2", "succeeded"))
        writes: list[tuple[str, bool]] = []
        real_set = store.set_status

        def recorded(task_id: str, target: str, **kwargs: Any) -> Any:
            writes.append((target, kwargs["durable"]))
            return real_set(task_id, target, **kwargs)

        monkeypatch.setattr(store, "set_status", recorded)
        with EventLog(tmp_path / "e.jsonl", "t1", store=store) as log:
            before, after = transition(
                store, log, "t1", TaskStatus.QUEUED, expect="collecting",
                via=TaskStatus.FAILED, detail="why", agent_retries=1,
            )  # fmt: skip
        assert (before, after.status, after.agent_retries) == ("collecting", "queued", 1)
        assert writes == [("queued", True)], "one write, as durable as a failure"
        (event,) = read_events(tmp_path / "e.jsonl")
        assert isinstance(event, Phase)
        assert (event.phase, event.previous, event.detail) == ("failed", "collecting", "why")
        # succeeded -> failed is no move: refused though failed -> queued is one.
        with pytest.raises(TaskStateError, match="a succeeded task cannot become failed"):
            transition(store, None, "t2", TaskStatus.QUEUED, via=TaskStatus.FAILED)
        assert store.get_task("t2").status == "succeeded" and len(writes) == 1


def test_compare_and_set_rechecks_when_the_status_moved_underneath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path) as store:
        store.insert_task(make_task(tmp_path, "t1", "collecting"))
        real_set = store.set_status
        calls: list[str] = []

        def cancel_first(task_id: str, target: str, **kwargs: object) -> object:
            if not calls:  # another process cancels between our read and our write
                store.update_task(task_id, status="cancelled")
            calls.append(target)
            return real_set(task_id, target, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "set_status", cancel_first)
        with pytest.raises(TaskStateError, match="cancelled task cannot become succeeded"):
            transition(store, None, "t1", TaskStatus.SUCCEEDED)
        assert store.get_task("t1").status == "cancelled"
        assert calls == ["succeeded"]


def test_a_runners_move_writes_without_reading_the_status_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A move need not read the status, then the row again inside its
    # write transaction: a runner knows the state it put the task in, and the write's
    # compare-and-set checks it: three statements a move (the
    # row comes back from the write, not from a read before it).
    with Store.open(tmp_path) as store:
        store.insert_task(make_task(tmp_path, "t1", "running"))
        store.insert_task(make_task(tmp_path, "t2", "running"))
        statements: list[str] = []
        store._db().set_trace_callback(statements.append)
        before, after = transition(store, None, "t1", TaskStatus.COLLECTING, expect="running")
        assert (before, after.status) == ("running", "collecting")
        assert statements[0] == "BEGIN IMMEDIATE" and len(statements) == 3, statements
        assert not any(s.startswith("SELECT status") for s in statements)
        # Taken meanwhile (stopped by another process): not written, and said so.
        store.update_task("t2", status="stopped")
        writes: list[str] = []
        real_set = store.set_status

        def recorded(task_id: str, target: str, **kwargs: Any) -> Any:
            writes.append(target)
            return real_set(task_id, target, **kwargs)

        monkeypatch.setattr(store, "set_status", recorded)
        with pytest.raises(TaskStateError, match="t2 is stopped, not running"):
            transition(store, None, "t2", TaskStatus.COLLECTING, expect="running")
        assert store.get_task("t2").status == "stopped" and writes == ["collecting"]
        # A move the table refuses from the expected state is never tried.
        with pytest.raises(TaskStateError, match="a collecting task cannot become running"):
            transition(store, None, "t1", TaskStatus.RUNNING, expect="collecting")
        assert store.get_task("t1").status == "collecting" and writes == ["collecting"]


def test_a_resting_state_is_committed_durably(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.insert_task(make_task(tmp_path, "t1", "running"))
        statements: list[str] = []
        store._db().set_trace_callback(statements.append)
        transition(store, None, "t1", TaskStatus.COLLECTING)
        assert not any("synchronous = FULL" in s for s in statements)
        statements.clear()
        transition(store, None, "t1", TaskStatus.SUCCEEDED)
        full = statements.index("PRAGMA synchronous = FULL")
        commit = statements.index("COMMIT")
        assert full < commit and statements[-1] == "PRAGMA synchronous = NORMAL"


def test_a_move_reads_and_validates_the_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step of a task need not read its whole row and validate it before the write,
    # then again inside the write, and validate the merged record a third time.
    from hal9999.store.records import TaskRecord

    with Store.open(tmp_path) as store:
        store.insert_task(make_task(tmp_path, "t1", "running"))
        statements: list[str] = []
        store._db().set_trace_callback(statements.append)
        validated: list[object] = []
        real = TaskRecord.model_validate
        monkeypatch.setattr(
            TaskRecord, "model_validate", lambda data, **kw: validated.append(data) or real(data)
        )
        before, after = transition(store, None, "t1", TaskStatus.COLLECTING, files_changed=2)
        monkeypatch.undo()
        # The row read once, as the write returns it.
        assert not any(s.startswith("SELECT *") for s in statements), statements
        assert len([s for s in statements if s.endswith("RETURNING *")]) == 1, statements
        assert len(validated) == 1
        assert (before, after.status, after.files_changed) == ("running", "collecting", 2)
        kept = store.get_task("t1")
        assert (kept.status, kept.files_changed, kept.env_keys) == ("collecting", 2, [])


# -- the race, from two processes ------------------------------------------------------------

SIDE = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from pathlib import Path
    from hal9999.config import HalConfig
    from hal9999.errors import HalError
    from hal9999.events.log import EventLog
    from hal9999.store import Store
    from hal9999.tasks.context import RunContext
    from hal9999.tasks.service import TaskService
    from hal9999.tasks.state import TaskStatus
    from hal9999.redact import SecretMasker

    role, other, home, task_id, gates = sys.argv[1:6]
    home, gates = Path(home), Path(gates)
    store = Store.open(home)
    service = TaskService(HalConfig(home=home), store, {})
    if role == "finish":
        store.update_task(task_id, runner_pid=os.getpid())
    armed = [True]

    def pause_after_first_read(read):
        # Let the other side act between this side's first read of the task and its write.
        def wrapped(*args, **kwargs):
            record = read(*args, **kwargs)
            if armed[0]:
                armed[0] = False
                (gates / f"{role}.read").touch()
                deadline = time.monotonic() + 5
                while not (gates / f"{other}.done").exists() and time.monotonic() < deadline:
                    time.sleep(0.005)
            return record
        return wrapped

    (gates / f"{role}.ready").touch()
    while not (gates / "go").exists():
        time.sleep(0.005)
    if (gates / f"{role}.first").exists():
        store.get_task = pause_after_first_read(store.get_task)
        store.find_task = pause_after_first_read(store.find_task)
    else:
        while not (gates / f"{other}.read").exists():
            time.sleep(0.005)

    async def act():
        if role == "cancel":
            return (await service.cancel(task_id)).status
        task = store.get_task(task_id)
        with EventLog(service.session(task).events, task_id, store=store) as events:
            ctx = RunContext(task=task, session=service.session(task), events=events,
                             masker=SecretMasker(), secrets={})
            ending = service.runner.ending
            done = await ending.finish(ctx, TaskStatus.SUCCEEDED, time.monotonic(), 0)
            return done.status

    try:
        result = {"status": asyncio.run(act())}
    except HalError as exc:
        result = {"error": exc.code}
    (gates / f"{role}.done").touch()
    print(json.dumps(result))
    """
)


@pytest.mark.parametrize("first", ["finish", "cancel"])
def test_cancel_racing_finish_from_two_processes_loses_neither(tmp_path: Path, first: str) -> None:
    home = tmp_path / "home"
    with Store.open(home) as store:
        store.insert_task(make_task(home, "race1", "collecting"))
    gates = tmp_path / "gates"
    gates.mkdir()
    (gates / f"{first}.first").touch()

    def side(role: str, other: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", SIDE, role, other, str(home), "race1", str(gates)]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    finisher = side("finish", "cancel")
    canceller = side("cancel", "finish")
    for role in ("finish", "cancel"):
        while not (gates / f"{role}.ready").exists():
            assert finisher.poll() is None and canceller.poll() is None
    (gates / "go").touch()
    finished = json.loads(finisher.communicate(timeout=60)[0])
    cancelled = json.loads(canceller.communicate(timeout=60)[0])

    with Store.open(home) as store:
        final = store.get_task("race1").status
    phases = [e.phase for e in read_events(home / "sessions" / "race1" / "events.jsonl")
              if isinstance(e, Phase)]  # fmt: skip
    # Exactly one side won; the other was told, and the record, the events and what each
    # side reported agree.
    assert phases == [final]
    assert final in ("succeeded", "cancelled")
    if final == "cancelled":
        assert cancelled == {"status": "cancelled"} and finished == {"status": "cancelled"}
    else:
        assert finished == {"status": "succeeded"} and cancelled == {"error": "task_state"}
