"""``POST /v1/tasks`` records the task with the daemon as its runner in one write, on no
event loop of its own, and its scheduler has the task's env before the task can start."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.support.server import runs_dispatched_at
from tests.support.tasks import git_repo, make_task

from hal9999.config import HalConfig
from hal9999.server.api import build_router
from hal9999.server.routing import ApiRequest, call_handler
from hal9999.store import Store
from hal9999.tasks.scheduler import Scheduler
from hal9999.tasks.served import ServedTaskAPI
from hal9999.tasks.service import TaskService


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TaskService]:
    home = tmp_path / "home"
    with Store.open(home) as store:
        yield TaskService(HalConfig(home=home), store, {})


def queue(submitted: list[str] | None = None) -> Any:
    """A scheduler's intake only (``submitted``: the ids submitted)."""
    found = submitted if submitted is not None else []
    return SimpleNamespace(
        submit=lambda task_id, env=None, keys=None, forge=None: found.append(task_id),
        hold=lambda task_id, env=None, keys=None, forge=None: None,
    )


async def post(
    service: TaskService, scheduler: Any, repo: Path, **extra: Any
) -> tuple[int, dict[str, Any]]:
    """``POST /v1/tasks`` of a trivial task of ``repo`` to a daemon of ``service``."""
    tasks = ServedTaskAPI(service, scheduler, None)  # type: ignore[arg-type]
    daemon: Any = SimpleNamespace(tasks=tasks, pool=None, config=service.config)
    [route] = [r for r in build_router(daemon).routes
               if r.path == "/v1/tasks" and r.method == "POST"]  # fmt: skip
    body = {"prompt": "x", "agent": "true {{prompt_file}}", "provider": "bwrap",
            "process_manager": "direct", "cwd": str(git_repo(repo)), **extra}  # fmt: skip
    request = ApiRequest("POST", "/v1/tasks", {}, {}, json.dumps(body).encode(), {})
    status, payload = await call_handler(route.handler, request, None)
    return status, payload


async def test_a_submission_is_one_task_write_with_the_daemon_as_runner(
    tmp_path: Path, service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = service.store
    submitted: list[str] = []
    writes: list[str] = []
    for name in ("insert_task", "update_task", "set_status"):
        original = getattr(store, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            writes.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(store, name, counted)
    loops: list[object] = []
    new_loop = asyncio.events.new_event_loop

    def counted_loop() -> asyncio.AbstractEventLoop:
        loops.append(None)
        return new_loop()

    # A loop per submission (asyncio.run in a worker thread), and the two threads
    # its executor started and joined, cost the daemon's CPU on every task.
    monkeypatch.setattr(asyncio.events, "new_event_loop", counted_loop)

    status, payload = await post(service, queue(submitted), tmp_path / "repo")

    assert status == 200, payload
    assert payload["runner_pid"] == os.getpid()
    assert store.get_task(payload["id"]).runner_pid == os.getpid()
    assert writes == ["insert_task"]
    assert loops == []
    assert submitted == [payload["id"]]


def opens_counted(service: TaskService) -> list[str]:
    """The ids of the tasks whose event log ``service`` opens from now on, in order."""
    opened: list[str] = []
    events = service.events

    def counted(task: Any, *args: Any, **kw: Any) -> Any:
        opened.append(task.id)
        return events(task, *args, **kw)

    service.events = counted  # type: ignore[method-assign]
    return opened


async def test_the_callers_config_notes_are_written_with_task_created(
    tmp_path: Path, service: TaskService
) -> None:
    # One open of the event log per submission (each was an open, a lock and an fsync before
    # the task could start), the notes right after task_created.
    opened = opens_counted(service)
    notes = {"describe": "config: HAL_HOME", "notice": "./hal.toml: ignored keys"}
    status, payload = await post(service, queue(), tmp_path / "repo", config_sources=notes)
    assert status == 200, payload
    assert opened == [payload["id"]]
    lines = Path(payload["session_dir"], "events.jsonl").read_text().splitlines()
    written = [(e["type"], e.get("level"), e.get("text")) for e in map(json.loads, lines)]
    assert written == [
        ("task_created", None, None),
        ("message", "info", "config: HAL_HOME"),
        ("message", "warning", "./hal.toml: ignored keys"),
    ]


async def test_an_in_process_runs_config_notes_are_written_with_task_created(
    tmp_path: Path, service: TaskService
) -> None:
    # The full `hal run` wrote them in a second open of the log once the task
    # existed (after a fast run's task_end, through a daemon: its follow never ended; in
    # process, a second open, lock and fsyncs a run). Now the request carries them.
    from hal9999.tasks.request import RunRequest

    opened = opens_counted(service)
    notes = {"describe": "config: HAL_HOME", "notice": None}
    request = RunRequest(
        prompt="x", repo=str(git_repo(tmp_path / "repo")), ref=None,
        agent="true {{prompt_file}}", provider="bwrap", process_manager="direct",
        timeout_s=None, config_sources=notes,
    )  # fmt: skip
    task = await service.create(request)
    assert opened == [task.id]
    lines = Path(task.session_dir, "events.jsonl").read_text().splitlines()
    written = [(e["type"], e.get("text")) for e in map(json.loads, lines)]
    assert written == [("task_created", None), ("message", "config: HAL_HOME")]


async def test_a_task_dispatched_before_its_submission_runs_with_its_env(
    tmp_path: Path, service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its --env values are never stored: the scheduler must have them before the row exists.
    async def create(scheduler: Scheduler) -> None:
        status, payload = await post(service, scheduler, tmp_path / "repo", env={"GIVEN": "v"})
        assert status == 200, payload

    runs = await runs_dispatched_at(service, monkeypatch, "insert_task", create)
    assert runs == [({"GIVEN": "v"}, None)]


async def test_a_resume_dispatched_before_its_submission_runs_with_its_prompt_and_env(
    tmp_path: Path, service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without its follow-up prompt, a resumed run would do the task's first prompt again.
    service.store.insert_task(make_task(service.config.home, "stop1234", "stopped"))
    daemon: Any = SimpleNamespace(pool=None, config=service.config)

    async def resume(scheduler: Scheduler) -> None:
        daemon.tasks = ServedTaskAPI(service, scheduler, None)  # type: ignore[arg-type]
        [route] = [r for r in build_router(daemon).routes
                   if r.path == "/v1/tasks/{id}/resume"]  # fmt: skip
        body = json.dumps({"prompt": "and now the tests", "env": {"GIVEN": "v"}}).encode()
        request = ApiRequest("POST", "/v1/tasks/stop1234/resume", {}, {}, body,
                             {"id": "stop1234"})  # fmt: skip
        status, payload = await call_handler(route.handler, request, None)
        assert status == 200, payload

    runs = await runs_dispatched_at(service, monkeypatch, "set_status", resume)
    assert runs == [({"GIVEN": "v"}, "and now the tests")]


async def test_a_resume_blames_a_setting_on_the_file_or_variable_that_set_it(
    tmp_path: Path, service: TaskService
) -> None:
    # Which file or variable set each of a task's settings was not kept with it: the
    # daemon's resume read them back without it and blamed a bad one on "config".
    from hal9999.config_origin import source_of

    caller = HalConfig(home=service.config.home, default_provider="bwrap", timeout_s=77)
    origin = [{"key": ["default_provider"], "source": "HAL_PROVIDER"},
              {"key": ["timeout_s"], "source": "/work/hal.toml"}]  # fmt: skip
    sent = caller.model_dump(mode="json")
    status, payload = await post(service, queue(), tmp_path / "repo", config=sent,
                                 config_origin=origin)  # fmt: skip
    assert status == 200, payload
    config = service.config_for(service.store.get_task(payload["id"]))
    assert config.timeout_s == 77
    assert source_of(config, "default_provider") == "HAL_PROVIDER"
    assert source_of(config, "timeout_s") == "/work/hal.toml"
    assert source_of(config, "default_agent") == "config"  # set by no file or variable
