"""``--json`` and the API say whether a task's branch was made (they said
``branch: hal/<id>`` for a task that made none, a branch no repository held). ``branch``
stays the name the task uses (a resume needs it); ``branch_made`` says whether it exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.hal import Hal, git

from hal9999.config import HalConfig
from hal9999.server.api import build_router
from hal9999.server.openapi import openapi_schema
from hal9999.server.routing import ApiRequest, call_handler
from hal9999.store import Store
from hal9999.tasks.served import ServedTaskAPI
from hal9999.tasks.service import TaskService

CASES = {
    # --ref that does not exist: the task fails before its checkout.
    "failed": (("--agent", "sh agent.sh {{prompt_file}}", "--ref", "no-such-branch"), False),
    # The agent exits without touching the repository: its branch is made at the base.
    "unchanged": (("--agent", "true {{prompt_file}}"), True),
    "result": (("--agent", "sh agent.sh {{prompt_file}}"), True),
    # The agent fails, and again when retried (--retries): what it left (nothing) is
    # brought back all the same, its branch at the base.
    "retried": (("--agent", "false {{prompt_file}}", "--retries", "1"), True),
}


def docs(hal: Hal, task_id: str) -> list[dict[str, Any]]:
    """The task as ``hal task show --json`` and ``hal task list --json`` print it."""
    shown = hal("task", "show", task_id, "--json")
    listed = hal("task", "list", "--json")
    assert shown.returncode == 0 and listed.returncode == 0, shown.stderr + listed.stderr
    return [json.loads(shown.stdout), *[t for t in json.loads(listed.stdout) if t["id"] == task_id]]


async def api_doc(hal: Hal, task_id: str) -> dict[str, Any]:
    """The task as the API's ``GET /v1/tasks/{id}`` answers, over the same home."""
    home = Path(hal.hal_env["HAL_HOME"])  # type: ignore[attr-defined]
    with Store.open(home) as store:
        service = TaskService(HalConfig(home=home), store, {})
        tasks = ServedTaskAPI(service, None, None)  # type: ignore[arg-type]
        daemon: Any = type("D", (), {"tasks": tasks, "pool": None, "config": service.config})()
        [route] = [r for r in build_router(daemon).routes
                   if r.path == "/v1/tasks/{id}" and r.method == "GET"]  # fmt: skip
        request = ApiRequest("GET", f"/v1/tasks/{task_id}", {}, {}, b"", {"id": task_id})
        status, payload = await call_handler(route.handler, request, None)
    assert status == 200, payload
    assert isinstance(payload, dict)
    return payload


@pytest.mark.parametrize("case", sorted(CASES))
async def test_every_json_surface_says_whether_the_branch_was_made(
    hal: Hal, demo_repo: Path, case: str
) -> None:
    args, made = CASES[case]
    ran = hal("run", *args, "--json", "x")
    run_doc = json.loads(ran.stdout)
    task_id = run_doc["id"]
    if case == "retried":
        assert (run_doc["status"], run_doc["agent_retries"]) == ("failed", 1), ran.stderr
    for resumed in (False, True):
        if resumed:
            again = hal("task", "resume", task_id, "--json")
            assert again.stdout, again.stderr
            run_doc = json.loads(again.stdout)
            assert run_doc["id"] == task_id
        surfaces = [run_doc, *docs(hal, task_id), await api_doc(hal, task_id)]
        assert [d["branch_made"] for d in surfaces] == [made] * 4, (case, resumed, ran.stderr)
        # The name the task uses is kept, made or not: a resume lands there.
        assert {d["branch"] for d in surfaces} == {f"hal/{task_id}"}
        listed = git(demo_repo, "branch", "--list", f"hal/{task_id}").strip()
        assert listed == (f"hal/{task_id}" if made else "")


def test_the_openapi_task_has_branch_made() -> None:
    daemon: Any = type("D", (), {"tasks": None, "pool": None, "config": None})()
    task = openapi_schema(build_router(daemon))["components"]["schemas"]["TaskRecord"]
    assert task["properties"]["branch_made"]["type"] == "boolean"
    assert "branch_made" in task["required"] and "branch" in task["required"]
