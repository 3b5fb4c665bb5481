"""``POST /v1/tasks`` records the task with the daemon as its runner in one write, on no
event loop of its own."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.tasks.test_halt import git_repo

from hal9999.config import HalConfig
from hal9999.server.api import build_router
from hal9999.server.routing import ApiRequest, call_handler
from hal9999.store import Store
from hal9999.tasks.service import TaskService


async def test_a_submission_is_one_task_write_with_the_daemon_as_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    config = HalConfig(home=home)
    store = Store.open(home)
    service = TaskService(config, store, {})
    submitted: list[str] = []
    scheduler = SimpleNamespace(submit=lambda task_id, env=None: submitted.append(task_id))
    daemon: Any = SimpleNamespace(service=service, scheduler=scheduler, pool=None,
                                  store=store, config=config)  # fmt: skip
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

    # Issue 16: a loop per submission (asyncio.run in a worker thread), and the two threads
    # its executor started and joined, were ~0.5 ms of the daemon's CPU a task.
    monkeypatch.setattr(asyncio.events, "new_event_loop", counted_loop)
    [route] = [r for r in build_router(daemon).routes
               if r.path == "/v1/tasks" and r.method == "POST"]  # fmt: skip
    body = {"prompt": "x", "agent": "true {{prompt_file}}", "provider": "bwrap",
            "process_manager": "direct", "cwd": str(git_repo(tmp_path / "repo"))}  # fmt: skip
    request = ApiRequest("POST", "/v1/tasks", {}, {}, json.dumps(body).encode(), {})

    status, payload = await call_handler(route.handler, request, None)

    assert status == 200, payload
    assert payload["runner_pid"] == os.getpid()
    assert store.get_task(payload["id"]).runner_pid == os.getpid()
    assert writes == ["insert_task"]
    assert loops == []
    assert submitted == [payload["id"]]
    store.close()


async def test_the_callers_config_notes_are_written_with_task_created(tmp_path: Path) -> None:
    # One open of the event log per submission (each was an open, a lock and an fsync before
    # the task could start, issue 16), the notes right after task_created as before.
    home = tmp_path / "home"
    config = HalConfig(home=home)
    store = Store.open(home)
    service = TaskService(config, store, {})
    opened: list[str] = []
    events = service.events

    def counted(task: Any, *args: Any, **kw: Any) -> Any:
        opened.append(task.id)
        return events(task, *args, **kw)

    service.events = counted  # type: ignore[method-assign]
    scheduler = SimpleNamespace(submit=lambda task_id, env=None: None)
    daemon: Any = SimpleNamespace(service=service, scheduler=scheduler, pool=None,
                                  store=store, config=config)  # fmt: skip
    [route] = [r for r in build_router(daemon).routes
               if r.path == "/v1/tasks" and r.method == "POST"]  # fmt: skip
    notes = {"describe": "config: HAL_HOME", "notice": "./hal.toml: ignored keys"}
    body = {"prompt": "x", "agent": "true {{prompt_file}}", "provider": "bwrap",
            "process_manager": "direct", "cwd": str(git_repo(tmp_path / "repo")),
            "config_sources": notes}  # fmt: skip
    request = ApiRequest("POST", "/v1/tasks", {}, {}, json.dumps(body).encode(), {})
    status, payload = await call_handler(route.handler, request, None)
    assert status == 200, payload
    assert opened == [payload["id"]]
    lines = Path(payload["session_dir"], "events.jsonl").read_text().splitlines()
    written = [(e["type"], e.get("level"), e.get("text")) for e in map(json.loads, lines)]
    assert written == [
        ("task_created", None, None),
        ("message", "info", "config: HAL_HOME"),
        ("message", "warning", "./hal.toml: ignored keys"),
    ]
    store.close()
