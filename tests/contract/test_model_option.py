"""``--model`` (the request's ``model``) reaches the preset's own model option on every path,
and is kept by the task for its later runs; a command template, which has no such option,
is refused before any task exists."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from tests.contract.conftest import TaskPath

from hal9999.errors import HalError

pytestmark = [pytest.mark.timeout(300), pytest.mark.bwrap, pytest.mark.tmux]

ECHO_CLAUDE = '[agents.claude]\ncommand = "echo"\nmodel = "config-model"\n'
"""The claude preset's command line printed instead of run (``echo``), its config model set."""


async def ended(path: TaskPath, task_id: str) -> None:
    deadline = time.monotonic() + 120
    while (await path.api.get(task_id)).status not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"task {task_id} did not end"
        await asyncio.sleep(0.3)


async def test_the_model_reaches_the_presets_model_option(task_path: TaskPath) -> None:
    task_path.config_file.parent.mkdir(parents=True, exist_ok=True)
    task_path.config_file.write_text(ECHO_CLAUDE)
    api = task_path.api
    created = await api.create(
        task_path.request("say hi", agent="claude", provider="local", model="opus-of-mine")
    )
    await ended(task_path, created.id)
    task = await api.get(created.id)
    argv = (Path(task.session_dir) / "agent.log").read_text()
    assert "--model opus-of-mine" in argv and "config-model" not in argv, argv
    kept = json.loads((Path(task.session_dir) / "config.json").read_text())
    assert kept["agents"]["claude"]["model"] == "opus-of-mine"


async def test_a_command_template_refuses_a_model(task_path: TaskPath) -> None:
    with pytest.raises(HalError) as refused:
        await task_path.api.create(task_path.request("x", agent="echo {{prompt}}", model="m"))
    assert refused.value.code == "usage"
    assert "--model is for an agent preset" in refused.value.message
    assert await task_path.api.list() == []
