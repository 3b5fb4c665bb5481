"""``recovery.resume``: what is left of a task whose runner died goes before a new run, and
only one process at a time decides how a task resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.tasks.test_recovery import DEAD_PID, make_task

from hal9999.config import HalConfig
from hal9999.errors import TaskStateError
from hal9999.spec import SandboxSpec
from hal9999.store import Store
from hal9999.tasks.plugins import load_provider_for
from hal9999.tasks.recovery import resume, resume_lock
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
