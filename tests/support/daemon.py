"""Driving a real ``hal serve`` from the CLI tests: polling its tasks and its state file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.crash import IN_FLIGHT
from tests.support.hal import Hal, tasks_json, tasks_now


def poll(what: str, check: Any, timeout: float = 30) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def serve_info(home: Path) -> dict[str, Any]:
    """The running daemon's ``run/serve.json`` under ``home``."""
    return json.loads((home / "run" / "serve.json").read_text())


def wait_status(hal: Hal, task_id: str, wanted: set[str], timeout: float = 30) -> dict[str, Any]:
    """The task ``task_id`` once its status is one of ``wanted``; fail after ``timeout``."""

    def check() -> dict[str, Any] | None:
        found = [t for t in tasks_now(hal) if t["id"] == task_id]
        return found[0] if found and found[0]["status"] in wanted else None

    return poll(f"task {task_id} to become {wanted}", check, timeout)  # type: ignore[no-any-return]


UNSETTLED = IN_FLIGHT | {"interrupted"}
"""A task's states after the daemon's stop that say it left the task unfinished (the listing
marks one in flight ``interrupted``)."""


def _running(hal: Hal, agent: str = "sleep 600") -> str:
    task_id = hal("run", "--detach", "--agent", agent, "wait").stdout.strip()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if [t for t in tasks_json(hal) if t["id"] == task_id and t["status"] == "running"]:
            return task_id
        time.sleep(0.1)
    pytest.fail(f"task {task_id} did not start")
