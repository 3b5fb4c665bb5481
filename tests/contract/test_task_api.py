"""Every method of :class:`hal9999.tasks.api.TaskAPI` answers the same on every path:
create, get (by a prefix), list, follow, cancel and remove."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.contract.conftest import TaskPath

from hal9999.errors import HalError
from hal9999.store import TaskRecord

pytestmark = [pytest.mark.timeout(300), pytest.mark.bwrap, pytest.mark.tmux]

FIX = "sh -c \"sed -i 's/a - b/a + b/' calc.py && echo fixed\""
"""A command-template agent that fixes the planted bug."""
WAIT = "sh -c 'echo waiting; sleep 120'"
"""An agent that stays running until it is cancelled."""
DEADLINE_S = 120.0


async def until(path: TaskPath, task_id: str, statuses: set[str]) -> TaskRecord:
    """The task once its status is one of ``statuses``."""
    deadline = time.monotonic() + DEADLINE_S
    while (task := await path.api.get(task_id)).status not in statuses:
        assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
        await asyncio.sleep(0.3)
    return task


async def test_a_created_task_is_found_listed_followed_to_its_end_and_removed(
    task_path: TaskPath,
) -> None:
    api = task_path.api
    created = await api.create(task_path.request("fix it", agent=FIX))
    assert created.status == "queued" and created.branch == f"hal/{created.id}"

    assert (await api.get(created.id[:6])).id == created.id, "a unique prefix finds it"
    assert created.id in [t.id for t in await api.list()]
    seen = [event.type async for event in api.follow(created.id)]
    assert seen[0] == "task_created" and "task_end" in seen, seen
    ended = await api.get(created.id)
    assert ended.status == "succeeded", ended.error_message
    assert [t.id for t in await api.list(status=["succeeded"])] == [created.id]
    assert await api.list(status=["failed"]) == []

    removed = await api.remove(created.id)
    assert removed.id == created.id
    assert created.id not in [t.id for t in await api.list()]
    with pytest.raises(HalError) as gone:
        await api.get(created.id)
    assert gone.value.code == "task_not_found"


async def test_a_cancelled_task_ends_cancelled_and_its_followers_end(
    task_path: TaskPath,
) -> None:
    api = task_path.api
    created = await api.create(task_path.request("wait", agent=WAIT))
    await until(task_path, created.id, {"running"})

    cancelled = await api.cancel(created.id)
    assert cancelled.status == "cancelled", (cancelled.status, cancelled.error_message)
    events = [event async for event in api.follow(created.id)]
    assert events and events[-1].type in ("task_end", "message"), [e.type for e in events]
    assert (await until(task_path, created.id, {"cancelled"})).status == "cancelled"
