"""``recovery.resume``: what is left of a task whose runner died goes before a new run, and
only one process at a time decides how a task resumes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import DEAD_PID, make_task

from hal9999.config import HalConfig
from hal9999.errors import TaskStateError
from hal9999.spec import SandboxSpec
from hal9999.store import Store
from hal9999.tasks.plugins import load_provider_for
from hal9999.tasks.recovery import mark_adopted, resume, resume_lock
from hal9999.tasks.service import TaskService
from hal9999.tasks.session import Session


def service_over(home: Path) -> tuple[Store, TaskService]:
    config = HalConfig(home=home)
    store = Store.open(home)
    return store, TaskService(config, store, {})


async def test_resume_destroys_the_dead_runners_sandbox_first(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store, service = service_over(home)
    fake = load_provider_for(service.config, "fake")
    left = await fake.create(SandboxSpec(provider="fake", labels={"hal.task": "dead1234"}))
    store.insert_task(
        make_task(home, "dead1234", "running", runner_pid=DEAD_PID, sandbox_id=left.id)
    )
    record, adopted = await resume(service, "dead1234")
    assert adopted is None, "no agent runs: nothing to adopt"
    assert record.status == "queued" and record.sandbox_id is None
    assert [s.id for s in await fake.list()] == [], "the old sandbox would hold the workspace"
    store.close()


async def test_a_second_resume_at_the_same_time_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store, service = service_over(home)
    task = make_task(home, "dead5678", "interrupted")
    store.insert_task(task)
    with (
        resume_lock(Session(Path(task.session_dir)), task.id),
        pytest.raises(TaskStateError, match="being resumed by another hal process"),
    ):
        await resume(service, "dead5678")
    assert store.get_task("dead5678").status == "interrupted", "the refused resume changed nothing"
    record, _ = await resume(service, "dead5678")
    assert record.status == "queued"
    store.close()


def test_an_adoption_never_shows_the_task_running_under_its_dead_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `running` with the dead runner's pid, even between two writes, is what any hal process
    # reconciles back to `interrupted`; a second `hal task resume` then adopted the agent
    # again (two runs on one workspace: seen in CI as a resume that never ended).
    home = tmp_path / "home"
    store = Store.open(home)
    service = TaskService(HalConfig(home=home), store, {})
    store.insert_task(make_task(home, "t1", "interrupted", runner_pid=DEAD_PID))
    task = store.get_task("t1")
    seen: list[tuple[str, int | None]] = []
    set_status = store.set_status

    def watched(*args: Any, **kwargs: Any) -> Any:
        updated = set_status(*args, **kwargs)
        row = store.get_task("t1")
        seen.append((row.status, row.runner_pid))
        return updated

    monkeypatch.setattr(store, "set_status", watched)
    adopted = mark_adopted(service, task, "a test")
    assert adopted.status == "running" and adopted.runner_pid == os.getpid()
    assert seen == [("running", os.getpid())]
    store.close()
