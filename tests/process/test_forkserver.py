"""The supervisor fork server: a forked supervisor runs its command as an exec'd one does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.process import direct
from hal9999.process.base import read_exit_status
from hal9999.process.direct import DirectProcessManager
from hal9999.process.forkserver import ForkServerClient, ServerUnavailable
from hal9999.process.supervisorargv import FORK_SERVER, SUPERVISOR
from hal9999.providers.local import LocalProvider
from hal9999.spec import ProcessSpec, SandboxSpec, ShellCommand

ENVS = [
    {},
    {"LANG": "C"},
    {"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
    {"LANG": "no_SUCH.UTF-8", "API_KEY": "a b=c"},
    {"LANG": "C.UTF-8", "PATH": "/usr/bin"},
    {"LC_CTYPE": "", "LANG": "POSIX"},
]


@pytest.fixture
def server() -> Iterator[ForkServerClient]:
    client = ForkServerClient(FORK_SERVER)
    yield client
    client.close()


def _wait(exit_file: Path) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = read_exit_status(exit_file)
        if status is not None:
            return status
        time.sleep(0.02)
    raise AssertionError("the supervisor did not exit")


def _args(tmp_path: Path, name: str, *command: str) -> tuple[list[str], Path, Path]:
    log, exit_file = tmp_path / f"{name}.log", tmp_path / f"{name}.exit"
    return ["--log", str(log), "--exit", str(exit_file), "--", *command], log, exit_file


@pytest.mark.parametrize("env", ENVS)
def test_forked_supervisor_gives_its_command_what_an_execd_one_did(
    server: ForkServerClient, tmp_path: Path, env: dict[str, str]
) -> None:
    """Same environment (the interpreter's C-locale coercion included), directory, status."""
    script = "env | LC_ALL=C sort; pwd; ls /proc/self/fd | wc -l; exit 5"
    seen = []
    for mode in ("exec", "fork"):
        args, log, exit_file = _args(tmp_path, mode, "/bin/sh", "-c", script)
        if mode == "exec":
            subprocess.run([*SUPERVISOR, *args], env=env, cwd="/var", start_new_session=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)  # fmt: skip
        else:
            server.spawn(args, env, Path("/var"))
        assert _wait(exit_file) == 5
        seen.append(log.read_text())
    assert seen[0] == seen[1]


def test_forked_supervisor_leads_its_session_and_is_reaped(
    server: ForkServerClient, tmp_path: Path
) -> None:
    args, log, exit_file = _args(tmp_path, "s", "/bin/sh", "-c", "cat /proc/$PPID/stat")
    pid = server.spawn(args, {"PATH": "/usr/bin:/bin"}, None)
    assert _wait(exit_file) == 0
    fields = log.read_text().rsplit(")", 1)[1].split()
    assert int(fields[2]) == pid and int(fields[3]) == pid  # its own group and session
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists()  # no zombie left by the server


def test_secrets_are_not_in_any_argv(server: ForkServerClient, tmp_path: Path) -> None:
    secret = "fork-server-s3cret-5678"
    args, _log, exit_file = _args(tmp_path, "k", "/bin/sleep", "1")
    server.spawn(args, {"API_KEY": secret}, None)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
    assert _wait(exit_file) == 0


def test_a_dead_server_is_started_again(server: ForkServerClient, tmp_path: Path) -> None:
    args, _log, exit_file = _args(tmp_path, "a", "/bin/true")
    server.spawn(args, {}, None)
    assert _wait(exit_file) == 0
    proc = server._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    args, _log, exit_file = _args(tmp_path, "b", "/bin/true")
    server.spawn(args, {}, None)  # the first attempt finds it gone and starts another
    assert _wait(exit_file) == 0
    assert server._proc is not proc


def test_the_server_ends_with_its_client(server: ForkServerClient, tmp_path: Path) -> None:
    args, _log, exit_file = _args(tmp_path, "e", "/bin/true")
    server.spawn(args, {}, None)
    assert _wait(exit_file) == 0
    proc = server._proc
    assert proc is not None and server._fd is not None
    server.close()  # closes its end of the socket, as the daemon's exit does
    assert proc.returncode == 0


async def test_a_process_forks_its_runs_after_the_first(tmp_path: Path) -> None:
    """The direct manager execs a process's first supervisor and forks the later ones (one
    interpreter start a daemon, not one a task); both report through the exit file."""
    provider = LocalProvider(state_dir=tmp_path / "state")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    manager = DirectProcessManager()
    parents = []
    async with await provider.create(
        SandboxSpec(provider="local", network="host", workspace=workspace)
    ) as sandbox:
        for n in range(3):
            spec = ProcessSpec(
                name=f"hal-fork-{n}",
                command=ShellCommand(script="exit 3"),
                log_path=tmp_path / "run" / f"out-{n}.log",
                exit_path=tmp_path / "run" / f"exit-{n}",
            )
            await manager.start(sandbox, spec)
            pid = int(spec.exit_path.with_name(f".{spec.exit_path.name}.pid").read_text())
            with contextlib.suppress(OSError):  # it may have ended and been reaped
                stat = Path(f"/proc/{pid}/stat").read_text()
                parents.append(int(stat.rsplit(")", 1)[1].split()[1]))
            deadline = time.monotonic() + 20
            while (status := await manager.status(spec)).state != "exited":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert status.exit_code == 3
    server = direct._STARTS.server._proc
    assert server is not None and server.poll() is None
    assert any(parent == server.pid for parent in parents)


def test_no_server_means_nothing_forked(tmp_path: Path) -> None:
    """A server that cannot start raises ServerUnavailable: the caller may exec instead."""
    client = ForkServerClient([str(tmp_path / "no-such-python")])
    with pytest.raises(ServerUnavailable):
        client.spawn(["--log", "x", "--exit", "y", "--", "/bin/true"], {}, None)
    client.close()


async def test_a_direct_run_makes_no_fifo_and_its_pidfd_wakes_the_follower(
    tmp_path: Path,
) -> None:
    """No FIFO beside a direct run's exit file (an inode a run); the follower
    listens on a pidfd of the supervisor, which fires once the exit status is written."""
    from hal9999.process.supervisor import ended_path
    from hal9999.tasks.follow import _EndedSignal

    provider = LocalProvider(state_dir=tmp_path / "state")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    manager = DirectProcessManager()
    async with await provider.create(
        SandboxSpec(provider="local", network="host", workspace=workspace)
    ) as sandbox:
        # The run ends when the test lets it, once the pidfd is open: with a fixed sleep, a
        # loaded machine that paused the test longer saw the supervisor gone (and reaped)
        # before the pidfd could be had, so there was no signal at all.
        gate = tmp_path / "go"
        spec = ProcessSpec(
            name="hal-pidfd",
            command=ShellCommand(script=f"until [ -e {gate} ]; do sleep 0.01; done; exit 4"),
            log_path=tmp_path / "run" / "out.log",
            exit_path=tmp_path / "run" / "exit-1",
        )
        await manager.start(sandbox, spec)
        assert not os.path.lexists(ended_path(spec.exit_path))
        signal = _EndedSignal.open(spec.exit_path, lambda: manager.ended_fd(spec))
        assert signal is not None
        try:
            gate.touch()
            async with asyncio.timeout(120):  # woken: a nap of an hour would time out here
                await signal.nap(3600)
            assert read_exit_status(spec.exit_path) == 4
        finally:
            signal.close()
        assert (await manager.status(spec)).exit_code == 4
