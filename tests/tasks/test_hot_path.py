"""What every task pays for on its way: no sandbox start without a use, rows,
reads, thread hops and inodes kept few (the supervisor's imports are pinned in
tests/process/test_supervisor_imports.py). Counted, not timed, so load cannot make these
pass or fail."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from tests import inodes
from tests.support.hal import git
from tests.support.tasks import git_repo, pooled_service, run_trivial_task, trivial_request
from tests.tasks.hops import hop_counter

from hal9999.spec import ArgvCommand
from hal9999.tasks import launch


@pytest.mark.bwrap
async def test_a_run_execs_in_its_sandbox_only_to_collect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The launcher checks the agent's program in the agent's own sandbox start; no separate
    # `command -v` start before it. What is left: collection, one exec.
    from hal9999.providers.bwrap.provider import BwrapSandbox

    repo = git_repo(tmp_path / "repo")
    execs: list[tuple[str, ...]] = []
    original = BwrapSandbox.exec

    async def counted(self: BwrapSandbox, command: ArgvCommand, **kwargs: object) -> object:
        execs.append(command.argv)
        return await original(self, command, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BwrapSandbox, "exec", counted)
    await run_trivial_task(tmp_path, repo)
    assert [argv[3] for argv in execs] == ["hal-collect"], execs


@pytest.mark.bwrap
@pytest.mark.parametrize("leased", [False, True])
async def test_a_daemon_task_writes_its_row_once_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leased: bool
) -> None:
    # A run rewrote the runner pid the daemon's queueing had recorded, and its end
    # cleared the sandbox and the runner pid in two writes (each a thread hop and a commit);
    # then in one more after the final status, which the run's follower waited for: now in
    # the final status's own write. The sandbox is recorded with `preparing`, the clone's
    # base commit with `running`, the count of files changed with the final status.
    from hal9999.store import Store

    repo = git_repo(tmp_path / "repo")
    store, service, _, pool = pooled_service(tmp_path / "home", "bwrap")
    if leased:  # the sandbox a pool's lease, as under `hal serve`
        from hal9999.tasks.sandboxes import PoolSource

        service.runner.sandboxes = PoolSource(pool)
    request = trivial_request(repo, runner_pid=os.getpid())
    task = service.create_blocking(request)
    writes: list[str] = []
    for name in ("update_task", "set_status"):
        original = getattr(Store, name)

        def counted(self: Store, task_id: str, *a: object, _o: Any = original, **kw: Any) -> Any:
            writes.append(kw.get("target", a[0] if a else "") or ",".join(sorted(kw)))
            return _o(self, task_id, *a, **kw)

        monkeypatch.setattr(Store, name, counted)
    done = await service.run(task.id)
    kept = store.get_task(task.id)
    monkeypatch.undo()
    await pool.drain()  # a leased one went back to the pool: nothing of it outlives the test
    store.close()
    assert done.status == "succeeded", done.error_message
    # A sandbox made for this run alone (not `leased`) stays on the record, with its
    # runner, until destroyed, then both are cleared: one more write, without which a run
    # killed between its final status and the destroy left the sandbox to nobody but the next
    # `hal serve` (tests/cli/test_dead_run_sweep.py). A pool's is cleared with the status.
    assert writes == [
        "provisioning", "preparing", "running", "collecting", "succeeded",
        *([] if leased else ["held_by,runner_pid,sandbox_id"]),
    ]  # fmt: skip
    assert (done.runner_pid, done.sandbox_id) == (None, None)
    assert (kept.runner_pid, kept.sandbox_id) == (None, None)
    assert kept.base_commit == git(repo, "rev-parse", "HEAD").strip() and kept.files_changed == 0


@pytest.mark.bwrap
async def test_what_a_run_learnt_is_recorded_with_a_failure_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clone's base commit waits for `running` to be written: a run failing before it
    # records it with its final status, so a resume reuses the checkout as before.
    from hal9999.errors import ProviderError
    from hal9999.tasks import launch

    async def failing(*args: object, **kwargs: object) -> None:
        raise ProviderError("credentials could not be installed")

    monkeypatch.setattr(launch, "install_files", failing)
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    request = trivial_request(repo)
    task = await service.create(request)
    done = await service.run(task.id)
    kept = store.get_task(task.id)
    store.close()
    assert done.status == "failed" and "credentials" in (done.error_message or "")
    assert kept.base_commit == git(repo, "rev-parse", "HEAD")
    assert (kept.runner_pid, kept.sandbox_id, kept.started_at) == (None, None, None)


@pytest.mark.bwrap
async def test_a_runs_final_phase_and_task_end_are_written_as_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The final status's phase and task_end as two batches back to back (two
    # index transactions, two appends, two fsyncs of events.jsonl) would delay the end the
    # run's caller waits for; they are one (EventLog.together).
    from hal9999.store import Store

    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    task = await service.create(trivial_request(repo))
    batches: list[list[str]] = []
    original = Store.record_events

    def counted(self: Store, task_id: str, rows: list[Any]) -> Any:
        batches.append([kind for _, kind, _ in rows])
        return original(self, task_id, rows)

    monkeypatch.setattr(Store, "record_events", counted)
    done = await service.run(task.id)
    monkeypatch.undo()
    store.close()
    assert done.status == "succeeded", done.error_message
    assert batches[-1][-2:] == ["phase", "task_end"], batches
    assert ["task_end"] not in batches


@pytest.mark.bwrap
async def test_a_process_just_started_is_not_asked_whether_it_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The follower asked the manager at once (tmux has-session, a
    # process) though it had just started the run; now only once the exit file is there or
    # after the liveness interval.
    import time

    from hal9999.process.base import read_exit_status
    from hal9999.process.direct import DirectProcessManager
    from hal9999.tasks import follow

    asked: list[tuple[bool, float]] = []
    original = DirectProcessManager.status
    started: list[float] = []
    original_start = DirectProcessManager.start

    async def start(self: DirectProcessManager, *args: object, **kwargs: object) -> None:
        started.append(time.monotonic())
        await original_start(self, *args, **kwargs)  # type: ignore[arg-type]

    async def status(self: DirectProcessManager, spec: object) -> object:
        exited = read_exit_status(spec.exit_path) is not None  # type: ignore[attr-defined]
        asked.append((exited, time.monotonic() - started[-1]))
        return await original(self, spec)  # type: ignore[arg-type]

    monkeypatch.setattr(DirectProcessManager, "start", start)
    monkeypatch.setattr(DirectProcessManager, "status", status)
    await run_trivial_task(tmp_path, git_repo(tmp_path / "repo"))
    assert asked and all(exited or late >= follow._LIVENESS_S for exited, late in asked), asked


@pytest.mark.bwrap
async def test_a_tasks_own_inodes_outside_its_checkout(tmp_path: Path) -> None:
    # Each inode made is dear on some hosts. What a task's run makes in
    # hal's own process (git's, the launcher's and the supervisor's files are their own
    # processes'; the checkout's are pinned in test_clone_processes), a sandbox created and
    # destroyed for it.
    repo = git_repo(tmp_path / "repo")
    home = tmp_path / "home"
    store, service, _, _ = pooled_service(home, "bwrap")
    request = trivial_request(repo)
    for _ in range(2):  # the second finds the state dir's shared files made
        task = await service.create(request)
        with inodes.created(home) as made:
            done = await service.run(task.id)
        assert done.status == "succeeded", done.error_message
    store.close()
    session = f"sessions/{task.id}/"
    own = sorted(p.removeprefix(session) for p in made if p.startswith(session))
    # The objects link made at once (a symlink renamed into place), no empty directory first.
    links = [p for p in own if p.startswith(".hal-objects")]
    assert len(links) == 1 and links[0].startswith(".hal-objects."), links
    # The mark of the run's start (made before `running`), which its supervisor renames to
    # the pid file hal then writes (the pid file's inode, made earlier).
    assert [p for p in own if not p.startswith(("workspace/", ".hal-objects"))] == [
        "run/.exit-0.unstarted"
    ]
    boxes = {p.split("/")[2] for p in made if p.startswith("sandboxes/bwrap/")}
    assert len(boxes) == 1
    box = f"sandboxes/bwrap/{boxes.pop()}"
    # A create's one save, the destroy's, and tmp (no home: the session's is bound; no etc:
    # the filter and uid switch are the provider's, a root hal's account files bwrap's own).
    expect = ["", "/.sandbox.json.<tmp>", "/.sandbox.json.<tmp>", "/tmp"]
    boxed = [p for p in made if p.startswith("sandboxes/")]
    assert inodes.steady(boxed) == sorted(box + e for e in expect)


def test_a_fresh_workspace_is_emptied_without_a_thread_hop_only_when_it_holds_something(
    tmp_path: Path,
) -> None:
    # A fresh task's workspace is empty; a clone cut short leaves files (a dangling
    # link among them) that must still go before the clone is made again.
    work = tmp_path / "workspace"
    work.mkdir()
    assert not launch._has_entries(work)
    assert not launch._has_entries(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    assert not launch._has_entries(tmp_path / "file")
    (work / ".git").mkdir()
    (work / ".git" / "HEAD").write_text("x")
    (work / "gone").symlink_to(tmp_path / "nowhere")
    assert launch._has_entries(work)
    launch._empty(work)
    assert work.is_dir() and not launch._has_entries(work)
    (work / "gone").symlink_to(tmp_path / "nowhere")
    assert launch._has_entries(work)


@pytest.mark.bwrap
async def test_a_trivial_tasks_run_takes_few_thread_hops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 16 tasks at once each hop to the default executor costs the daemon
    # CPU (thread wake-ups and GIL hand-overs); a fresh clone at HEAD is one hop
    # (was four with the workspace's emptying), a checkout's alternates and collection's
    # gitlinks note are read where they are needed. A pin: lower it when a hop goes, never
    # raise it. The events written by the flusher, as a daemon's are: its moves that are not
    # durable (`preparing`, `collecting`) are written on the loop, without a hop.
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    service.writers.background = True
    hops: list[str] = []
    counted = hop_counter(hops)

    for _ in range(2):  # the second finds the snapshot and the pool's sandbox made
        task = await service.create(trivial_request(repo))
        hops.clear()
        monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "run_in_executor", counted)
        done = await service.run(task.id)
        monkeypatch.undo()
        assert done.status == "succeeded", done.error_message
    store.close()
    for gone in ("_empty", "write_git_dir", "new_branch", "drop_reflogs", "point_alternates"):
        assert gone not in hops, hops
    assert "base_without_gitlinks" not in hops, hops
    assert "Ballast.ensure" not in hops, hops  # the disk reserve is there: a stat, no hop
    assert not {"route_for", "identify"} & set(hops), hops  # in the provisioning move's hop
    moved = hops.count("RunRecorder.transition.<locals>.moved_then")  # provisioning (running)
    assert not {"adopt_each", "adopt"} & set(hops) and moved == 1 + (os.geteuid() == 0), hops
    assert "RunRecorder.transition_sync" not in hops, hops  # `preparing`, `collecting` on the loop
    # The landing's record goes in the final status' hop, the adoption in running's.
    assert not any("_landed" in h or "write_host_file" in h for h in hops) and len(hops) <= 12, hops


@pytest.mark.bwrap
@pytest.mark.parametrize("sends_config", [False, True])  # True: as an in-process `hal run`
async def test_tasks_of_one_service_share_their_provider_and_a_reset_reads_its_record_less(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sends_config: bool
) -> None:
    # Each task built its provider twice (its creation's check and its run; its
    # settings validated, its helpers and the host checked each time), and a pool reset read
    # and validated the sandbox's record six times (stop, the check that it stayed stopped,
    # again, start, the verification, the prime): the start now takes the record the reset
    # has, the check and the verification the records the stop and the start saved, the
    # prime and the next claim the handle the reset made (11 reads over two tasks, now 4).
    # A pin: lower it when a read goes, never raise it.
    from hal9999.pool import lending
    from hal9999.providers import records
    from hal9999.providers.registry import load_provider
    from hal9999.tasks import plugins
    from hal9999.tasks.sandboxes import PoolSource

    repo = git_repo(tmp_path / "repo")
    store, service, _, pool = pooled_service(tmp_path / "home", "bwrap")
    service.runner.sandboxes = PoolSource(pool)
    built: list[str] = []

    def counted_build(name: str, **kw: Any) -> Any:
        built.append(name)
        return load_provider(name, **kw)

    monkeypatch.setattr(plugins, "load_provider", counted_build)
    loads: list[str] = []
    real_load = records.JsonRecords.load

    def counted_load(self: Any, sandbox_id: str) -> Any:
        loads.append(sandbox_id)
        return real_load(self, sandbox_id)

    real_reset = lending.PoolLending._reset
    reset_loads: list[int] = []

    async def counted_reset(self: Any, entry: Any) -> None:
        before = len(loads)
        await real_reset(self, entry)
        reset_loads.append(len(loads) - before)

    monkeypatch.setattr(records.JsonRecords, "load", counted_load)
    monkeypatch.setattr(lending.PoolLending, "_reset", counted_reset)
    try:
        for _ in range(2):
            config = {"config": service.config} if sends_config else {}
            task = await service.create(trivial_request(repo, **config))
            done = await service.run(task.id)
            assert done.status == "succeeded", done.error_message
            while pool._background:  # the reset after the run's end
                await asyncio.gather(*list(pool._background))
    finally:
        await pool.drain()  # the reset primed a keeper: nothing of the test outlives it
        store.close()
    assert len(reset_loads) == 2 and all(n <= 1 for n in reset_loads), reset_loads
    assert len(loads) <= 4, loads  # the second task's claim takes the reset's handle
    assert built == ["bwrap"], built
