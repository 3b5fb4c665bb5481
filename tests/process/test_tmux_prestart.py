"""A task's tmux session opened ahead of its run: the server and the supervisor start
while the task's checkout is made, the supervisor waiting on a FIFO (``--go``), so the run's
start is one byte written; every way a run ends before that leaves no server and runs
nothing, and the pane's environment is the run's own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.process import _reads, servers, spec_for, wait_exit
from tests.support.tasks import git_repo, pooled_service, trivial_request

from hal9999.errors import ProcessError, RepoError
from hal9999.process import tmux as tmux_module
from hal9999.process.base import never_started
from hal9999.process.launch import SUPERVISOR, supervised
from hal9999.process.supervisor import go_path, unstarted_path
from hal9999.process.tmux import TmuxProcessManager
from hal9999.providers.base import Sandbox
from hal9999.spec import ArgvCommand, ProcessSpec, ShellCommand
from hal9999.tasks import gitrepo
from hal9999.tasks.context import process_spec
from hal9999.tasks.session import Session


async def gone(socket: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while servers(socket) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not servers(socket)


def marking(tmp_path: Path, script: str = "") -> tuple[ProcessSpec, Path]:
    """A spec whose command leaves a marker file (and runs ``script``)."""
    marker = tmp_path / "ran"
    return spec_for(tmp_path, ShellCommand(script=f"touch {marker}; {script}")), marker


@pytest.mark.tmux
async def test_a_prestarted_run_starts_only_when_let_and_takes_no_tmux_command(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = TmuxProcessManager()
    secret = "prestarted-secret-value-4321"
    spec, marker = marking(tmp_path, 'echo "key=$API_KEY"; echo "v=$PLAIN"')
    env = {"API_KEY": secret, "PLAIN": "seen"}
    await manager.prestart(sandbox, spec, env=env)
    socket = manager.socket(spec)
    assert len(servers(socket)) == 1, "the session is open"
    assert (await manager.status(spec)).state == "running"
    assert not marker.exists() and not spec.exit_path.exists(), "nothing ran yet"
    calls: list[list[str]] = []
    real_run_host = tmux_module.run_host

    async def counting(argv: list[str], **kwargs: object) -> tuple[int, str]:
        calls.append(list(argv))
        return await real_run_host(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tmux_module, "run_host", counting)
    await manager.start(sandbox, spec, env=env)
    assert await wait_exit(manager, spec) == 0
    assert calls == [], "the start is a byte on the FIFO, no tmux client"
    assert marker.exists()
    # Both reached the pane (each exec-time value is masked: a missing one would be empty).
    assert spec.log_path.read_text() == "key=[REDACTED]\nv=[REDACTED]\n"
    assert await gone(socket), "the server ends with its session"
    assert manager._go == {} and manager._early == {}, "the FIFO is let go with the run"


@pytest.mark.tmux
async def test_a_run_stopped_before_its_start_runs_nothing_and_leaves_no_server(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    manager = TmuxProcessManager()
    spec, marker = marking(tmp_path)
    await manager.prestart(sandbox, spec)
    socket = manager.socket(spec)
    assert servers(socket)
    await manager.stop(spec)
    assert await gone(socket)
    assert not marker.exists() and not spec.exit_path.exists()
    # A later manager (a restarted daemon's recovery) stops it too, knowing only the spec.
    await manager.prestart(sandbox, spec)
    await TmuxProcessManager().stop(spec)
    assert await gone(socket)
    assert not marker.exists() and not spec.exit_path.exists()


@pytest.mark.tmux
async def test_a_run_another_process_stopped_before_its_start_is_not_opened_again(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # `hal task cancel` in another process kills the prestarted session; the starter's
    # start must not open a new one (it ran the agent of a cancelled task, which the
    # cancel's stop then waited for).
    manager = TmuxProcessManager()
    spec, marker = marking(tmp_path)
    await manager.prestart(sandbox, spec)
    socket = manager.socket(spec)
    await TmuxProcessManager().stop(spec)
    assert await gone(socket)
    with pytest.raises(ProcessError, match="ended before the run's start"):
        await manager.start(sandbox, spec)
    await asyncio.sleep(0.5)  # a supervisor opened anyway would have run its command by now
    assert not servers(socket) and not marker.exists() and not spec.exit_path.exists()
    assert manager._early == {} and manager._go == {}


@pytest.mark.tmux
def test_a_prestarted_run_whose_starter_is_gone_runs_nothing_and_leaves_no_server(
    tmp_path: Path,
) -> None:
    # The daemon dies (kill -9) while the task is prepared: its end of the FIFO closes with
    # it, and the waiting supervisor ends without starting the command, its server with it.
    marker = tmp_path / "ran"
    starter = f"""
import asyncio, sys
from pathlib import Path
from hal9999.process.tmux import TmuxProcessManager
from hal9999.providers.local import LocalProvider
from hal9999.spec import ProcessSpec, SandboxSpec, ShellCommand

async def main():
    provider = LocalProvider(state_dir=Path({str(tmp_path / "state")!r}))
    ws = Path({str(tmp_path / "ws")!r}); ws.mkdir()
    sandbox = await provider.create(SandboxSpec(provider="local", network="host", workspace=ws))
    spec = ProcessSpec(name="hal-test", command=ShellCommand(script="touch {marker}"),
                       log_path=Path({str(tmp_path / "run" / "out.log")!r}),
                       exit_path=Path({str(tmp_path / "run" / "exit")!r}))
    manager = TmuxProcessManager()
    await manager.prestart(sandbox, spec)
    print(manager.socket(spec), flush=True)

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, check=True
    )
    socket = Path(done.stdout.strip().splitlines()[-1])
    assert asyncio.run(gone(socket))
    assert not marker.exists() and not (tmp_path / "run" / "exit").exists()


@pytest.mark.tmux
async def test_a_pane_opened_with_another_environment_is_not_the_runs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ShellCommand(script='echo "v=${PLAIN:-unset}"'))
    await manager.prestart(sandbox, spec, env={"PLAIN": "stale"})
    await manager.start(sandbox, spec, env={})
    assert await wait_exit(manager, spec) == 0
    assert spec.log_path.read_text() == "v=unset\n"
    assert await gone(manager.socket(spec))


def test_the_supervisor_waits_for_its_go_and_without_one_runs_nothing(tmp_path: Path) -> None:
    *start, code = SUPERVISOR
    exit_file, marker = tmp_path / "exit", tmp_path / "ran"
    fifo = Path(go_path(exit_file))
    os.mkfifo(fifo, 0o600)
    argv = [*start, code, "--log", str(tmp_path / "log"), "--exit", str(exit_file),
            "--go", str(fifo), "--", "touch", str(marker)]  # fmt: skip
    # No writer (its hal gone before it held the FIFO): ends at once, having run nothing.
    assert subprocess.run(argv, timeout=60, check=False).returncode == 0
    assert not marker.exists() and not exit_file.exists()
    # A writer that closes without the byte: the same.
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    waiting = subprocess.Popen(argv)
    os.close(held)
    assert waiting.wait(timeout=60) == 0
    assert not marker.exists() and not exit_file.exists()
    # A ^C in the pane while it waits (someone attached) is not the end of the run.
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    waiting = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 60
        while not _reads(waiting.pid, fifo) and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting.send_signal(signal.SIGINT)
        os.write(held, b"g")
        assert waiting.wait(timeout=60) == 0
    finally:
        os.close(held)
    assert marker.exists() and exit_file.read_text() == "0\n"
    marker.unlink()
    exit_file.unlink()
    # The byte, written even before the supervisor opens the FIFO: the command runs.
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    os.write(held, b"g")
    try:
        assert subprocess.run(argv, timeout=60, check=False).returncode == 0
    finally:
        os.close(held)
    assert marker.exists() and exit_file.read_text() == "0\n"


async def test_a_supervisor_whose_go_never_came_says_its_command_never_started(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # What a next daemon reads after a kill -9 of the one that was to write the `g` (its
    # task `running` already): the run left no agent, not one that may have run and gone.
    spec, marker = marking(tmp_path)
    argv = supervised(sandbox, spec, None, go=True).argv
    held = os.open(go_path(spec.exit_path), os.O_RDWR | os.O_NONBLOCK)
    waiting = await asyncio.create_subprocess_exec(*argv)
    os.close(held)  # the daemon's end of the FIFO, closed by its death
    assert await asyncio.wait_for(waiting.wait(), 60) == 0
    assert not marker.exists() and not spec.exit_path.exists()
    assert never_started(spec.exit_path)
    # The next try of the same run (an infra retry: the same exit file) starts clean, and a
    # run that got its `g` is never said to have not started.
    argv = supervised(sandbox, spec, None, go=True).argv
    assert not never_started(spec.exit_path)
    held = os.open(go_path(spec.exit_path), os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(held, b"g")
        started = await asyncio.create_subprocess_exec(*argv)
        assert await asyncio.wait_for(started.wait(), 60) == 0
    finally:
        os.close(held)
    assert marker.exists() and spec.exit_path.read_text() == "0\n"
    assert not os.path.lexists(unstarted_path(spec.exit_path))
    assert not never_started(spec.exit_path)


@pytest.mark.tmux
@pytest.mark.bwrap
@pytest.mark.parametrize("error", [RepoError("clone failed"), RuntimeError("a bug")])
async def test_a_task_failing_between_its_sessions_opening_and_its_start_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    opened: list[Path] = []
    real_prestart = TmuxProcessManager.prestart

    async def prestart(self: TmuxProcessManager, sandbox: Sandbox, spec: ProcessSpec,
                       **kwargs: object) -> None:  # fmt: skip
        await real_prestart(self, sandbox, spec, **kwargs)  # type: ignore[arg-type]
        opened.append(self.socket(spec))

    async def clone(*args: object, **kwargs: object) -> str:
        while not opened:  # the session is open before the checkout fails
            await asyncio.sleep(0.01)
        raise error

    monkeypatch.setattr(TmuxProcessManager, "prestart", prestart)
    monkeypatch.setattr(gitrepo, "clone", clone)
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    request = trivial_request(git_repo(tmp_path / "repo")).model_copy(
        update={"process_manager": "tmux"}
    )
    task = await service.create(request)
    if isinstance(error, RepoError):
        done = await service.run(task.id)
        assert done.status == "failed"
    else:
        with pytest.raises(RuntimeError):
            await service.run(task.id)
    pspec = process_spec(task, Session(Path(task.session_dir)), ArgvCommand(argv=("true",)))
    assert opened == [TmuxProcessManager().socket(pspec)]
    assert await gone(opened[0])
    assert not pspec.exit_path.exists(), "the agent never started"
    store.close()


# A ^C that lands just after the FIFO is opened (stood in for by one the supervisor sends
# itself from its fstat of the FIFO): in the full suite on two workers it came between the
# open and the SIGINT ignore, and the supervisor died with a KeyboardInterrupt.
_CTRL_C_AFTER_OPEN = """
import os, signal, sys
from hal9999.process import supervisor
real = supervisor.posix
class Posix:
    def __getattr__(self, name):
        return getattr(real, name)
    def fstat(self, fd):
        os.kill(os.getpid(), signal.SIGINT)
        return real.fstat(fd)
supervisor.posix = Posix()
fifo = sys.argv[1]
held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
if sys.argv[2:]:  # a warm supervisor's wait for its run (no arguments, no variables)
    os.write(held, b"4\\n/\\x000\\x00")
    print(supervisor.wait_warm(fifo))
else:
    os.write(held, b"g")
    print(supervisor.wait_go(fifo))
"""


@pytest.mark.parametrize("warm", [False, True])
def test_a_ctrl_c_just_after_the_fifo_is_opened_does_not_end_the_wait(
    tmp_path: Path, warm: bool
) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo, 0o600)
    argv = [sys.executable, "-c", _CTRL_C_AFTER_OPEN, str(fifo), *(["warm"] if warm else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["([], {})" if warm else "True"]
