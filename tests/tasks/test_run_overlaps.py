"""What a run does side by side rather than one after the other: the tmux
session's start and the `preparing` write, the bring-back and an unchanged result's empty
patch. Pinned by the order of their steps, not by time, so load cannot make these pass or
fail."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.hal import git
from tests.support.tasks import git_repo, pooled_service, trivial_request

from hal9999.errors import UnsafePath
from hal9999.tasks import collect, landing
from hal9999.tasks.session import Session


@pytest.mark.bwrap
async def test_an_unchanged_results_branch_moves_while_its_empty_patch_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The empty patch's write (a thread, two fsyncs) and the bring-back's
    # `update-ref` (a git in the source) ran one after the other on every unchanged run.
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    moving = threading.Event()
    seen: list[bool] = []
    real_git, real_nothing = landing.git, collect._nothing

    async def counted_git(args: list[str], **kwargs: Any) -> str:
        if args[0] == "update-ref":
            moving.set()
        return await real_git(args, **kwargs)

    def nothing(session: Session, out: str) -> Any:
        seen.append(moving.wait(20))  # a bound for the code before: it never moved first
        return real_nothing(session, out)

    monkeypatch.setattr(landing, "git", counted_git)
    monkeypatch.setattr(collect, "_nothing", nothing)
    task = await service.create(trivial_request(repo))
    done = await service.run(task.id)
    store.close()
    assert seen == [True]
    assert done.status == "succeeded", done.error_message
    assert done.files_changed == 0
    session = Session(Path(done.session_dir))
    assert session.patch.read_bytes() == b""
    assert git(repo, "rev-parse", done.branch) == git(repo, "rev-parse", "HEAD")


@pytest.mark.bwrap
async def test_an_unchanged_results_patch_that_cannot_be_written_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written alongside the bring-back, its error is still the run's, as before.
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")

    def refused(session: Session, out: str) -> Any:
        raise UnsafePath("result.patch is not a regular file")

    monkeypatch.setattr(collect, "_nothing", refused)
    task = await service.create(trivial_request(repo))
    done = await service.run(task.id)
    store.close()
    assert done.status == "failed"
    assert done.error_code == UnsafePath.code
    assert done.error_message is not None
    assert done.error_message.startswith("collecting the result: result.patch")


@pytest.mark.bwrap
@pytest.mark.tmux
async def test_the_tmux_session_opens_while_preparing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The running phase waits on the prestarted session (tmux's start, the
    # supervisor's interpreter), which began only once `preparing` was written.
    from hal9999.process.tmux import TmuxProcessManager
    from hal9999.tasks.recorder import RunRecorder
    from hal9999.tasks.state import TaskStatus

    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    real_prestart, real_transition = TmuxProcessManager.prestart, RunRecorder.transition
    opening = asyncio.Event()
    seen: list[bool] = []

    async def prestart(self: TmuxProcessManager, *args: Any, **kw: Any) -> None:
        opening.set()
        await real_prestart(self, *args, **kw)

    async def transition(
        self: RunRecorder, ctx: Any, target: TaskStatus, *a: Any, **kw: Any
    ) -> Any:
        if target is TaskStatus.PREPARING:
            with contextlib.suppress(TimeoutError):  # a bound for the code before
                await asyncio.wait_for(opening.wait(), 20)
            seen.append(opening.is_set())
        return await real_transition(self, ctx, target, *a, **kw)

    monkeypatch.setattr(TmuxProcessManager, "prestart", prestart)
    monkeypatch.setattr(RunRecorder, "transition", transition)
    request = trivial_request(repo)
    task = await service.create(request.model_copy(update={"process_manager": "tmux"}))
    done = await service.run(task.id)
    store.close()
    assert seen == [True]
    assert done.status == "succeeded", done.error_message


@pytest.mark.bwrap
@pytest.mark.tmux
@pytest.mark.parametrize("manager", ["tmux", "direct"])
async def test_a_cancel_between_running_and_the_start_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager: str
) -> None:
    # The daemon answers a cancel while the same task's run is between its `running` and its
    # agent's start: the cancel's stop finds no process yet, so the start that followed ran
    # the agent of a cancelled task (and a cancel whose stop saw its supervisor waited for
    # the agent's end). Pinned by the order of the steps: the cancel ends before the start.
    from hal9999.tasks.recorder import RunRecorder
    from hal9999.tasks.state import TaskStatus

    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    real_transition = RunRecorder.transition
    cancelled: list[str] = []

    async def transition(
        self: RunRecorder, ctx: Any, target: TaskStatus, *a: Any, **kw: Any
    ) -> Any:
        done = await real_transition(self, ctx, target, *a, **kw)
        if target is TaskStatus.RUNNING:
            cancelled.append((await service.cancel(ctx.task.id)).status)
        return done

    monkeypatch.setattr(RunRecorder, "transition", transition)
    request = trivial_request(repo).model_copy(
        update={"agent": "sleep 60 {{prompt_file}}", "process_manager": manager}
    )
    task = await service.create(request)
    started = time.monotonic()
    done = await asyncio.wait_for(service.run(task.id), 50)
    store.close()
    assert cancelled == ["cancelled"]
    assert done.status == "cancelled", done.error_message
    assert time.monotonic() - started < 40, "the run waited for an agent that should not run"
    exit_file = Session(Path(task.session_dir)).exit_file(0)
    assert not exit_file.exists(), "a supervisor started the agent after the cancel"
