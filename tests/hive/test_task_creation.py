"""A hive turn's task and an MCP sub-task are born this daemon's (and a turn's on its agent's
branch): the row a dispatch or another process's claim reads right after the insert is
already the right one, with no second write to race."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.server import runs_dispatched_at
from tests.support.tasks import git_repo, trivial_request

from hal9999.config import HalConfig
from hal9999.hive import stats
from hal9999.hive.store import AgentRecord, get_agent, insert_agent
from hal9999.hive.turns import HiveLoop
from hal9999.hivesettings import HiveSettings
from hal9999.store import Store, TaskRecord
from hal9999.tasks.scheduler import Scheduler
from hal9999.tasks.served import ServedTaskAPI
from hal9999.tasks.service import TaskService


class Queue:
    """The scheduler's intake only."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, task_id: str, *_: Any, **__: Any) -> None:
        self.submitted.append(task_id)

    def hold(self, task_id: str, *_: Any, **__: Any) -> None:
        pass


def watched(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[TaskRecord]:
    """The records as inserted; an update of a runner's field or the branch fails the test."""
    inserted: list[TaskRecord] = []
    insert, update = store.insert_task, store.update_task

    def insert_task(record: TaskRecord) -> None:
        inserted.append(record)
        insert(record)

    def update_task(task_id: str, **fields: Any) -> TaskRecord:
        assert not {"runner_pid", "sandbox_id", "branch"} & set(fields), fields
        return update(task_id, **fields)

    monkeypatch.setattr(store, "insert_task", insert_task)
    monkeypatch.setattr(store, "update_task", update_task)
    return inserted


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TaskService]:
    home = tmp_path / "home"
    with Store.open(home) as store:
        yield TaskService(HalConfig(home=home, process_manager="direct"), store, {})


async def test_a_turns_task_is_born_held_on_its_agents_branch(
    tmp_path: Path, service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = git_repo(tmp_path / "repo")
    now = time.time()
    insert_agent(service.store, AgentRecord(name="alice", agent="true {{prompt_file}}",
                                            provider="local", repo=str(repo),
                                            created_at=now, updated_at=now))  # fmt: skip
    queue = Queue()
    loop = HiveLoop(ServedTaskAPI(service, queue, None), HiveSettings())  # type: ignore[arg-type]
    inserted = watched(service.store, monkeypatch)
    turn = stats.start_turn(service.store, "alice", None, "message from operator", [])
    task_id = await loop._start(get_agent(service.store, "alice"), "hello", turn)
    [record] = inserted
    assert (record.id, record.branch) == (task_id, "hal/agent/alice")
    assert stats.open_turn(service.store, "alice").task_id == task_id  # type: ignore[union-attr]
    assert record.runner_pid == os.getpid()
    assert queue.submitted == [task_id]
    assert get_agent(service.store, "alice").task_id == task_id


async def test_an_mcp_sub_task_is_born_held(
    tmp_path: Path, service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = git_repo(tmp_path / "repo")
    queue = Queue()
    tasks = ServedTaskAPI(service, queue, None)  # type: ignore[arg-type]
    inserted = watched(service.store, monkeypatch)
    task = await tasks.create(trivial_request(repo, "local"))
    [record] = inserted
    assert (record.id, record.branch, record.runner_pid) == (task.id, f"hal/{task.id}", os.getpid())
    assert task.runner_pid == os.getpid() and queue.submitted == [task.id]


async def test_an_mcp_sub_task_dispatched_before_its_submission_runs_with_its_env(
    tmp_path: Path, service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = trivial_request(git_repo(tmp_path / "repo"), "local", given_env={"GIVEN": "v"})

    async def create(scheduler: Scheduler) -> None:
        await ServedTaskAPI(service, scheduler, None).create(request)  # type: ignore[arg-type]

    runs = await runs_dispatched_at(service, monkeypatch, "insert_task", create)
    assert runs == [({"GIVEN": "v"}, None)]
