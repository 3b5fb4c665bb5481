"""A run the direct and PM2 managers start with no supervisor ahead of it:
hal marks it not started (:func:`arm_start`) before recording it ``running``; its supervisor
takes the mark just before the command starts, and a next daemon that finds the mark takes
it instead (:func:`take_unstarted`), so exactly one of them has the run: the agent starts, or
the task is queued again, never both."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.pm2_home import pm2_manager

from hal9999.process.base import ProcessManager, arm_start, never_started, take_unstarted
from hal9999.process.direct import DirectProcessManager
from hal9999.process.launch import supervised
from hal9999.process.supervisor import claim_start, go_path, unstarted_path
from hal9999.providers.base import Launch, Sandbox
from hal9999.spec import ProcessSpec, RestartPolicy, ShellCommand

pytestmark = [pytest.mark.timeout(120)]


def marking(tmp_path: Path) -> tuple[ProcessSpec, Path]:
    """A spec whose command leaves a file (it ran) and says something in its log."""
    ran = tmp_path / "ran"
    spec = ProcessSpec(
        name="hal-claim",
        command=ShellCommand(script=f"touch {ran}; echo the-agent-ran"),
        log_path=tmp_path / "run" / "out.log",
        exit_path=tmp_path / "run" / "exit-0",
    )
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    return spec, ran


@pytest.fixture(params=["direct", pytest.param("pm2", marks=pytest.mark.pm2)])
async def manager(request: pytest.FixtureRequest) -> AsyncIterator[ProcessManager]:
    if request.param == "direct":
        yield DirectProcessManager()
        return
    async with pm2_manager() as pm2:
        yield pm2


async def ended(manager: ProcessManager, spec: ProcessSpec) -> str:
    """The run's state once it is no longer running."""
    for _ in range(600):
        state = (await manager.status(spec)).state
        if state != "running":
            return state
        await asyncio.sleep(0.05)
    raise AssertionError("the run never ended")


async def test_an_armed_run_starts_and_its_supervisor_takes_the_mark(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    spec, ran = marking(tmp_path)
    arm_start(spec.exit_path)  # as the run's `running` move does, before it is written
    assert os.path.lexists(unstarted_path(spec.exit_path))
    await manager.start(sandbox, spec)
    try:
        assert await ended(manager, spec) == "exited"
        assert ran.exists() and spec.exit_path.read_text() == "0\n"
        assert not os.path.lexists(unstarted_path(spec.exit_path)), "taken by its supervisor"
        assert not never_started(spec.exit_path)
        assert not take_unstarted(spec.exit_path), "a run that started is never queued again"
        if isinstance(manager, DirectProcessManager):  # the mark became its pid file
            pid_file = spec.exit_path.with_name(".exit-0.pid")
            assert int(pid_file.read_text()) > 0
    finally:
        await manager.stop(spec)


async def test_a_run_recovery_took_never_starts(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner killed -9 between `running` and its supervisor's start: the next daemon
    # takes the mark (the task is queued again); a supervisor that comes to its start after
    # that (PM2's `pm2 start`, or a fork, outliving its hal) starts nothing and touches
    # nothing of the run.
    spec, ran = marking(tmp_path)
    arm_start(spec.exit_path)
    taken: list[bool] = []
    module = importlib.import_module(type(manager).__module__)

    def recovered_meanwhile(*args: Any, **kwargs: Any) -> Launch:
        launch = supervised(*args, **kwargs)  # the supervisor's command line, then the take
        taken.extend((take_unstarted(spec.exit_path), take_unstarted(spec.exit_path)))
        spec.log_path.write_text("the next try's log\n")
        return launch

    monkeypatch.setattr(module, "supervised", recovered_meanwhile)
    await manager.start(sandbox, spec)
    assert taken == [True, False], "taken once"
    try:
        assert await ended(manager, spec) == "missing"
        assert not ran.exists() and not spec.exit_path.exists()
        assert spec.log_path.read_text() == "the next try's log\n"
    finally:
        await manager.stop(spec)


async def test_a_run_nothing_armed_starts_as_before(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # A process that is no task's run (or a mark an earlier try left, removed by the
    # start): no `--claim`, the command runs.
    spec, ran = marking(tmp_path)
    assert "--claim" not in supervised(sandbox, spec, None, claim=True).argv
    await manager.start(sandbox, spec)
    try:
        assert await ended(manager, spec) == "exited" and ran.exists()
    finally:
        await manager.stop(spec)


async def test_an_armed_run_that_restarts_starts(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # PM2 runs a restarted app's supervisor again (the second would find the mark taken):
    # its start claims nothing. The direct supervisor restarts inside one process: it does.
    spec, ran = marking(tmp_path)
    spec = spec.model_copy(update={"restart": RestartPolicy(mode="on-failure", max_restarts=1)})
    arm_start(spec.exit_path)
    await manager.start(sandbox, spec)
    try:
        assert await ended(manager, spec) == "exited" and ran.exists()
        assert not os.path.lexists(unstarted_path(spec.exit_path))
    finally:
        await manager.stop(spec)


def test_the_supervisor_is_told_what_to_take(sandbox: Sandbox, tmp_path: Path) -> None:
    spec, _ = marking(tmp_path)
    arm_start(spec.exit_path)
    launch = supervised(sandbox, spec, None, claim=True)
    argv = launch.argv
    assert argv[argv.index("--claim") + 1] == unstarted_path(spec.exit_path)
    assert launch.claims, "the manager is told, not left to read the command line"
    assert os.path.lexists(unstarted_path(spec.exit_path)), "left for the supervisor"
    unclaimed = supervised(sandbox, spec, None)
    assert "--claim" not in unclaimed.argv and not unclaimed.claims
    assert not os.path.lexists(unstarted_path(spec.exit_path)), "an unclaimed start clears it"
    arm_start(spec.exit_path)
    assert not supervised(sandbox, spec, None, claim=True, go=True).claims, "a go FIFO's"


def test_a_mark_renamed_to_the_pid_file_names_its_claimer_first(tmp_path: Path) -> None:
    # Direct's supervisor: hal writes the pid only once its spawn returns; killed
    # before that, it left the claimed run's pid file empty (no pid to adopt or stop).
    exit_file = tmp_path / "exit-0"
    arm_start(exit_file)
    pid_file = tmp_path / ".exit-0.pid"
    assert claim_start(unstarted_path(exit_file), str(pid_file))
    assert pid_file.read_text() == str(os.getpid())
    assert not os.path.lexists(unstarted_path(exit_file))


def test_a_mark_that_is_a_link_is_never_claimed(tmp_path: Path) -> None:
    exit_file = tmp_path / "exit-0"
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, unstarted_path(exit_file))
    assert not claim_start(unstarted_path(exit_file), str(tmp_path / ".exit-0.pid"))
    assert target.read_text() == "" and not (tmp_path / ".exit-0.pid").exists()


def test_the_mark_is_never_made_through_a_link(tmp_path: Path) -> None:
    # The run directory is hal's, but the mark is made as if the agent could reach it.
    exit_file = tmp_path / "exit-0"
    target = tmp_path / "elsewhere"
    os.symlink(target, unstarted_path(exit_file))
    arm_start(exit_file)
    assert not target.exists() and os.path.islink(unstarted_path(exit_file))


async def test_a_dropped_prestarted_supervisor_marks_no_later_try(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # A race (tmux): a prestarted pane dropped, its supervisor outliving tmux's
    # SIGHUP, its go FIFO ending only after the run's next try (the same exit file) made its
    # own. Its mark said that later try never started: a next daemon finding that try's
    # agent gone would have queued it again (run twice).
    spec, ran = marking(tmp_path)
    fifo = go_path(spec.exit_path)
    argv = supervised(sandbox, spec, None, go=True).argv
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # the dropping hal's end
    dropped = await asyncio.create_subprocess_exec(*argv)
    try:
        for _ in range(1200):  # until it waits on its FIFO
            fds = Path(f"/proc/{dropped.pid}/fd")
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) == fifo for fd in fds.iterdir()):
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the supervisor never opened its FIFO")
        supervised(sandbox, spec, None, go=True)  # the next try's files, its own FIFO
    finally:
        os.close(held)
    assert await asyncio.wait_for(dropped.wait(), 60) == 0
    assert not ran.exists()
    assert not os.path.lexists(unstarted_path(spec.exit_path)), "no mark for the later try"
    assert not never_started(spec.exit_path)
