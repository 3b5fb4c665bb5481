"""The tmux server started ahead of its session (issue 16): a task's server starts while its
checkout is made, so only ``new-session`` is on the run's path; every way a run ends before
its session leaves no server behind, and the pane's environment is the run's own."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from tests.process.test_managers import spec_for, wait_exit
from tests.tasks.test_halt import git_repo
from tests.tasks.test_hot_path import trivial_request
from tests.tasks.test_recovery import pooled_service

from hal9999.errors import RepoError
from hal9999.process import tmux as tmux_module
from hal9999.process.tmux import TmuxProcessManager
from hal9999.providers.base import Sandbox
from hal9999.providers.local import LocalProvider
from hal9999.spec import ArgvCommand, SandboxSpec, ShellCommand
from hal9999.tasks import gitrepo
from hal9999.tasks.context import process_spec
from hal9999.tasks.session import Session

pytestmark = pytest.mark.tmux


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    provider = LocalProvider(state_dir=tmp_path / "state")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    async with await provider.create(
        SandboxSpec(provider="local", network="host", workspace=workspace)
    ) as sb:
        yield sb


def servers(socket: Path) -> list[int]:
    """The tmux servers of ``socket`` (a server keeps the argv of the client that forked
    it, which names the socket), whether or not the socket file is still there."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "tmux: server" and str(socket).encode() in argv:
            found.append(int(pid))
    return found


async def gone(socket: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while servers(socket) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not servers(socket)


async def test_a_prestarted_server_runs_the_session_and_ends_with_it(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = TmuxProcessManager()
    secret = "prestarted-secret-value-4321"
    spec = spec_for(tmp_path, ShellCommand(script='echo "key=$API_KEY"; echo "v=$PLAIN"'))
    env = {"API_KEY": secret, "PLAIN": "seen"}
    await manager.prestart(sandbox, spec, env=env)
    socket = manager.socket(spec)
    first = servers(socket)
    assert len(first) == 1, "the server lives without a session"
    calls: list[list[str]] = []
    real_run_host = tmux_module.run_host

    async def counting(argv: list[str], **kwargs: object) -> tuple[int, str]:
        calls.append(list(argv))
        return await real_run_host(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tmux_module, "run_host", counting)
    await manager.start(sandbox, spec, env=env)
    assert await wait_exit(manager, spec) == 0
    assert [call[3] for call in calls] == ["start-server"], "no kill-server, one command"
    assert "new-session" in calls[0]
    assert calls[0][-5:] == [";", "set-option", "-s", "exit-empty", "on"]
    # Both reached the pane (each exec-time value is masked: a missing one would be empty).
    assert spec.log_path.read_text() == "key=[REDACTED]\nv=[REDACTED]\n"
    assert await gone(socket), "the server ends with its last session again"
    assert not (set(first) & set(servers(socket)))


async def test_a_run_stopped_before_its_session_leaves_no_server(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ArgvCommand(argv=("true",)))
    await manager.prestart(sandbox, spec)
    socket = manager.socket(spec)
    assert servers(socket)
    await manager.stop(spec)
    assert await gone(socket)
    # A later manager (a restarted daemon's recovery) stops it too, knowing only the spec.
    await manager.prestart(sandbox, spec)
    await TmuxProcessManager().stop(spec)
    assert await gone(socket)


async def test_a_server_started_with_another_environment_is_not_the_panes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ShellCommand(script='echo "v=${PLAIN:-unset}"'))
    await manager.prestart(sandbox, spec, env={"PLAIN": "stale"})
    await manager.start(sandbox, spec, env={})
    assert await wait_exit(manager, spec) == 0
    assert "v=unset" in spec.log_path.read_text()
    assert await gone(manager.socket(spec))


@pytest.mark.bwrap
@pytest.mark.parametrize("error", [RepoError("clone failed"), RuntimeError("a bug")])
async def test_a_task_failing_between_its_servers_start_and_its_session_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    started: list[Path] = []
    real_prestart = TmuxProcessManager.prestart

    async def prestart(self: TmuxProcessManager, sandbox: Sandbox, spec: object,
                       **kwargs: object) -> None:  # fmt: skip
        await real_prestart(self, sandbox, spec, **kwargs)  # type: ignore[arg-type]
        started.append(self.socket(spec))  # type: ignore[arg-type]

    async def clone(*args: object, **kwargs: object) -> str:
        while not started:  # the server is up before the checkout fails
            await asyncio.sleep(0.01)
        raise error

    monkeypatch.setattr(TmuxProcessManager, "prestart", prestart)
    monkeypatch.setattr(gitrepo, "clone", clone)
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    request = replace(trivial_request(git_repo(tmp_path / "repo")), process_manager="tmux")
    task = await service.create(request)
    if isinstance(error, RepoError):
        done = await service.run(task.id)
        assert done.status == "failed"
    else:
        with pytest.raises(RuntimeError):
            await service.run(task.id)
    pspec = process_spec(task, Session(Path(task.session_dir)), ArgvCommand(argv=("true",)))
    assert started == [TmuxProcessManager().socket(pspec)]
    assert await gone(started[0])
    store.close()
