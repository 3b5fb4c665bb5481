"""A run's checkout and home are handed to the sandbox's user in the ``running`` move's
thread hop, before the move is written (one hop fewer before the agent's start);
a failed handing leaves the task ``preparing``. Ordered and counted, not timed."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.support.tasks import credentialed, git_repo, pooled_service, trivial_request

from hal9999.providers.host import user as sandboxuser
from hal9999.store import Store
from hal9999.tasks.session import Session

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(os.geteuid() != 0, reason="a sandbox user of its own needs root"),
]


async def test_the_adoption_is_made_in_the_running_moves_hop_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    seen: list[tuple[str, str, int]] = []
    real_adopt, real_set = sandboxuser.adopt_each, Store.set_status

    def adopt_each(roots: Any, uid: int) -> None:
        frame, caller = sys._getframe(1), ""
        while frame is not None and not caller:  # made by the move's own step?
            caller, frame = ("move" if frame.f_code.co_name == "moved_then" else ""), frame.f_back
        seen.append(("adopt", caller, threading.get_ident()))
        real_adopt(roots, uid)

    def set_status(self: Store, task_id: str, target: str, **k: Any) -> Any:
        if target == "running":  # the checkout is the sandbox user's when `running` is written
            workspace = Session(Path(self.get_task(task_id).session_dir)).workspace
            seen.append(("status", str(os.stat(workspace).st_uid), threading.get_ident()))
        return real_set(self, task_id, target, **k)

    monkeypatch.setattr(sandboxuser, "adopt_each", adopt_each)
    monkeypatch.setattr(Store, "set_status", set_status)
    task = await service.create(trivial_request(repo))
    done = await service.run(task.id)
    monkeypatch.undo()
    store.close()
    assert done.status == "succeeded", done.error_message
    assert [kind for kind, _, _ in seen] == ["adopt", "status"], seen
    assert seen[0][1] == "move" and seen[1][1] != "0", seen  # in the move's hop; adopted
    assert seen[0][2] == seen[1][2], seen  # one thread


async def test_a_failed_adoption_leaves_the_task_preparing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    written: list[str] = []
    real_set = Store.set_status

    def adopt_each(roots: Any, uid: int) -> None:
        raise PermissionError(13, "refused by the test")

    def set_status(self: Store, task_id: str, target: str, **k: Any) -> Any:
        written.append(target)
        return real_set(self, task_id, target, **k)

    monkeypatch.setattr(sandboxuser, "adopt_each", adopt_each)
    monkeypatch.setattr(Store, "set_status", set_status)
    task = await service.create(trivial_request(repo))
    done = await service.run(task.id)
    monkeypatch.undo()
    store.close()
    assert "running" not in written, written
    assert written[-1] == "failed" and done.status == "failed", (written, done)
    assert "refused by the test" in (done.error_message or ""), done.error_message


async def test_with_a_credential_file_the_adoption_comes_first_in_a_hop_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The credential file is written into the home after it is handed over (and given to
    # the sandbox's user itself): the handing cannot wait for the move's hop then.
    from hal9999.tasks import launch

    repo = git_repo(tmp_path / "repo")
    store, service = credentialed(tmp_path, tmp_path / "home")
    seen: list[str] = []
    real_adopt, real_install = sandboxuser.adopt_each, launch.install_files

    def adopt_each(roots: Any, uid: int) -> None:
        frame, caller = sys._getframe(1), "hop"
        while frame is not None:
            caller = "move" if frame.f_code.co_name == "moved_then" else caller
            frame = frame.f_back
        seen.append(f"adopt in {caller}")
        real_adopt(roots, uid)

    async def install_files(sandbox: Any, files: Any, home: str) -> None:
        seen.append("install")
        await real_install(sandbox, files, home)

    monkeypatch.setattr(sandboxuser, "adopt_each", adopt_each)
    monkeypatch.setattr(launch, "install_files", install_files)
    task = await service.create(trivial_request(repo))
    done = await service.run(task.id)
    monkeypatch.undo()
    store.close()
    assert done.status == "succeeded", done.error_message
    assert seen == ["adopt in hop", "install"], seen
