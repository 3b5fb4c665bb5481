"""A daemon's status moves that are not durable (``preparing``, ``collecting``) are written on
the event loop when the write lock is free at once, without a thread hop (the
hop costs a busy daemon more CPU than the move); when another writer holds the lock, or
the phase event would be written on the loop (in-process), in a thread as before. Counted,
not timed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import git_repo, pooled_service, trivial_request
from tests.tasks.hops import hop_counter

from hal9999.store import Store
from hal9999.store.writelock import WriteBusy

pytestmark = pytest.mark.bwrap


@pytest.mark.parametrize("case", ["busy", "in-process"])
async def test_a_move_is_made_in_a_thread_when_the_lock_is_taken_or_its_event_written_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    repo = git_repo(tmp_path / "repo")
    store, service, _, pool = pooled_service(tmp_path / "home", "bwrap")
    service.writers.background = case == "busy"  # a daemon's writers, or a `hal run`'s
    tried: list[tuple[str, bool]] = []
    real_set = Store.set_status

    def set_status(self: Store, task_id: str, target: str, **kw: Any) -> Any:
        tried.append((target, kw.get("wait", True)))
        if not kw.get("wait", True):  # another writer holds the lock: nothing written
            raise WriteBusy("held")
        return real_set(self, task_id, target, **kw)

    hops: list[str] = []
    task = await service.create(trivial_request(repo))
    monkeypatch.setattr(Store, "set_status", set_status)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "run_in_executor", hop_counter(hops))
    done = await service.run(task.id)
    monkeypatch.undo()
    await pool.drain()
    store.close()
    assert done.status == "succeeded", done.error_message
    moved = [target for target, wait in tried if wait]
    assert moved == ["provisioning", "preparing", "running", "collecting", "succeeded"], tried
    tried_first = [target for target, wait in tried if not wait]
    assert tried_first == (["preparing", "collecting"] if case == "busy" else []), tried
    assert hops.count("RunRecorder.transition_sync") == 2, hops  # each in a thread after all
