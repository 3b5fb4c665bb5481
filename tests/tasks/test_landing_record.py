"""The record of the branch a run's bring-back moved (``run/brought-back.json``) is written
in the final status' thread hop, before the status, fsynced as before (one hop
fewer on the way to a task's end). Ordered, not timed."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.support.hal import git
from tests.support.tasks import git_repo, pooled_service, trivial_request
from tests.tasks.hops import hop_counter

from hal9999 import agentfs
from hal9999.store import Store
from hal9999.tasks import ending
from hal9999.tasks.context import RunContext
from hal9999.tasks.session import Session

pytestmark = pytest.mark.bwrap


async def test_the_landings_record_is_written_in_the_final_status_hop_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    seen: list[tuple[str, str, int]] = []
    real_write, real_set = agentfs.write_host_file, Store.set_status
    real_finish = ending.RunEnding._finish

    def write(dest: Path, *a: Any, **k: Any) -> int:
        size = real_write(dest, *a, **k)
        seen.append(("write", dest.name, threading.get_ident()))
        return size

    def set_status(self: Store, task_id: str, target: str, **k: Any) -> Any:
        seen.append(("status", target, threading.get_ident()))
        return real_set(self, task_id, target, **k)

    def finish(self: Any, *a: Any, **k: Any) -> Any:
        seen.append(("finish", "", threading.get_ident()))
        return real_finish(self, *a, **k)

    monkeypatch.setattr(agentfs, "write_host_file", write)
    monkeypatch.setattr(Store, "set_status", set_status)
    monkeypatch.setattr(ending.RunEnding, "_finish", finish)
    task = await service.create(trivial_request(repo))
    done = await service.run(task.id)
    monkeypatch.undo()
    store.close()
    assert done.status == "succeeded", done.error_message
    ends = [i for i, (kind, what, _) in enumerate(seen) if kind == "finish"]
    assert len(ends) == 1, seen
    # In the final status' hop: the record (fsynced by write_host_file), then the status.
    after = [(kind, what) for kind, what, thread in seen[ends[0] :]]
    assert after[:3] == [("finish", ""), ("write", "brought-back.json"), ("status", "succeeded")]
    assert len({thread for _, _, thread in seen[ends[0] : ends[0] + 3]}) == 1, seen
    assert [what for kind, what, _ in seen].count("brought-back.json") == 1, seen
    record = json.loads(Session(Path(done.session_dir)).brought_back.read_text())
    assert record == {done.branch: git(repo, "rev-parse", done.branch)}


def test_a_run_pays_what_it_owes_once_in_order(tmp_path: Path) -> None:
    paid: list[int] = []
    ctx = RunContext.__new__(RunContext)
    ctx.owed = [lambda: paid.append(1), lambda: paid.append(2)]
    ending.pay_owed(ctx)
    ending.pay_owed(ctx)
    assert paid == [1, 2] and ctx.owed == []


async def test_a_secret_tasks_patch_marker_takes_no_hop_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With secrets to look for, the patch's marker (``run/patch-checked``) is
    # removed and made in the `collecting` and final moves' hops, not in hops of their
    # own. The marker is there at the end: the scan cleared it.
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    hops: list[str] = []
    counted = hop_counter(hops)

    service.environ["H1_TOKEN"] = "a-secret-value-4711"  # type: ignore[index]  # the host's
    task = await service.create(trivial_request(repo, secret_names=["H1_TOKEN"]))
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "run_in_executor", counted)
    done = await service.run(task.id)
    monkeypatch.undo()
    store.close()
    assert done.status == "succeeded", done.error_message
    assert not {"Path.unlink", "Path.touch"} & set(hops), hops
    assert Session(Path(done.session_dir)).patch_checked.exists()
