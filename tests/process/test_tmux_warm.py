"""Warm panes on a daemon's shared tmux server: a run claims an idle session whose
supervisor has started, hands it its command and environment through a private FIFO (never
argv, never the server's environment), and starts no interpreter on its path; an idle pane
runs nothing and ends with its daemon; the shared server starts at the first tmux run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.process import _reads, run_spec, servers, wait_exit

from hal9999 import procs
from hal9999.errors import ProcessError
from hal9999.process import tmux as tmux_module
from hal9999.process.launch import SUPERVISOR
from hal9999.process.tmux import TmuxProcessManager, share_lazily, unshare_server
from hal9999.process.tmuxwarm import WarmPane, WarmPanes
from hal9999.providers.base import Sandbox

pytestmark = pytest.mark.tmux


async def warm_pane(runtime: Path) -> WarmPane:
    """The idle warm pane of ``runtime``'s daemon, its supervisor started and waiting."""
    warm = tmux_module._WARM[runtime]
    warm.refill()
    deadline = time.monotonic() + 20
    while not warm.idle or not _reads(warm.idle[0].pid, warm.idle[0].fifo):
        assert time.monotonic() < deadline, "no warm pane"
        await asyncio.sleep(0.02)
    return warm.idle[0]


def session_names(socket: Path) -> list[str]:
    listed = subprocess.run(
        ["tmux", "-S", str(socket), "list-sessions", "-F", "#{session_name}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return listed.stdout.split()


async def test_a_run_claims_a_warm_pane_and_starts_no_supervisor(
    tmp_path: Path,
    runtime: Path,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    shared = tmux_module.shared_socket(runtime)
    pane = await warm_pane(runtime)
    marker = tmp_path / "ran"
    spec = run_spec(tmp_path, "hal-w", f'touch {marker}; echo "key=$API_KEY"; sleep 30')
    env = {"API_KEY": "warm-secret-value-9876"}
    calls: list[list[str]] = []
    real_run_host = tmux_module.run_host

    async def counting(argv: list[str], **kwargs: object) -> tuple[int, str]:
        calls.append(list(argv))
        return await real_run_host(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tmux_module, "run_host", counting)
    await manager.prestart(sandbox, spec, env=env)
    assert not marker.exists() and not spec.exit_path.exists(), "nothing runs before its go"
    await manager.start(sandbox, spec, env=env)
    monkeypatch.setattr(tmux_module, "run_host", real_run_host)
    # Its pane is the warm one: no supervisor (nor tmux server) started on the run's path,
    # one tmux client (the session renamed as the run's), nothing of the run in its argv.
    assert manager._panes[manager.socket(spec)] == (pane.pid, pane.started)
    assert [argv[-3:] for argv in calls] == [
        ["-t", f"={pane.name}", "hal-w-" + manager.socket(spec).name[:8]]
    ]
    assert not any(SUPERVISOR[-1] in argv for argv in calls)
    deadline = time.monotonic() + 20
    while "key=" not in (spec.log_path.read_text() if spec.log_path.exists() else ""):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert spec.log_path.read_text().startswith("key=[REDACTED]"), "its secret, masked"
    assert b"warm-secret" not in Path(f"/proc/{pane.pid}/cmdline").read_bytes()
    assert b"warm-secret" not in Path(f"/proc/{pane.pid}/environ").read_bytes()
    # Attach and the next daemon find it as any run's session.
    assert manager.target(spec) in {f"={name}:" for name in session_names(shared)}
    assert (await TmuxProcessManager(runtime_dir=runtime).status(spec)).state == "running"
    await manager.stop(spec)
    assert await wait_exit(manager, spec) == 129  # its SIGHUP, passed on
    assert not pane.fifo.exists(), "its FIFO let go with the run"


async def test_two_warm_runs_each_see_only_their_own_environment(
    tmp_path: Path,
    runtime: Path,
    sandbox: Sandbox,
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    shared = tmux_module.shared_socket(runtime)
    script = 'env > "$OUT"; sleep 30'
    runs = []
    for name, var in (("hal-x", "SECRET_X"), ("hal-y", "SECRET_Y")):
        pane = await warm_pane(runtime)
        out = tmp_path / f"{name}.env"
        spec = run_spec(tmp_path, name, script)
        env = {var: f"value-of-{name}", "OUT": str(out)}
        await manager.prestart(sandbox, spec, env=env)
        await manager.start(sandbox, spec, env=env)
        assert manager._panes[manager.socket(spec)][0] == pane.pid, "a warm pane took it"
        runs.append((spec, out))
    for _spec, out in runs:
        deadline = time.monotonic() + 20
        while not out.exists() or "TMUX_PANE" not in out.read_text():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    env_x, env_y = (out.read_text() for _, out in runs)
    assert "SECRET_X=value-of-hal-x" in env_x and "SECRET_Y" not in env_x
    assert "SECRET_Y=value-of-hal-y" in env_y and "SECRET_X" not in env_y
    assert "LD_PRELOAD" not in env_x + env_y
    assert "TERM=" in env_x and "TMUX=" in env_x  # a pane's, as a pane opened for it has
    (server,) = servers(shared)
    assert b"value-of" not in Path(f"/proc/{server}/cmdline").read_bytes()
    glob = subprocess.run(["tmux", "-S", str(shared), "show-environment", "-g"],
                          capture_output=True, text=True, check=False).stdout  # fmt: skip
    assert "value-of" not in glob and "SECRET" not in glob
    await manager.stop(runs[0][0])
    assert (await manager.status(runs[1][0])).state == "running", "a stop ends its run alone"
    await manager.stop(runs[1][0])


async def test_a_claimed_pane_whose_go_never_comes_runs_nothing(
    tmp_path: Path,
    runtime: Path,
    sandbox: Sandbox,
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    pane = await warm_pane(runtime)
    marker = tmp_path / "ran"
    spec = run_spec(tmp_path, "hal-n", f"touch {marker}")
    await manager.prestart(sandbox, spec)
    assert manager._panes[manager.socket(spec)][0] == pane.pid
    await manager.stop(spec)  # a run ended before its start
    deadline = time.monotonic() + 10
    while procs.started(pane.pid) == pane.started:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert not marker.exists() and not spec.exit_path.exists()


def test_an_idle_warm_pane_ends_with_its_killed_daemon_and_runs_nothing(tmp_path: Path) -> None:
    run = tmp_path / "home" / "run"
    script = f"""
import asyncio, sys
from hal9999.process import tmux
async def main():
    await tmux.share_server({str(run)!r})
    warm = tmux._WARM[{str(run)!r}]
    warm.refill()
    while not warm.idle:
        await asyncio.sleep(0.02)
    pane = warm.idle[0]
    print(pane.pid, pane.started, pane.fifo, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
""".replace(repr(str(run)), f"__import__('pathlib').Path({str(run)!r})")
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    pid, started, fifo = daemon.stdout.readline().split()
    shared = tmux_module.shared_socket(run)
    try:
        deadline = time.monotonic() + 20
        while not _reads(int(pid), Path(fifo)):  # its interpreter is up, waiting
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        while procs.started(int(pid)) == int(started):
            assert time.monotonic() < deadline, "the idle pane outlived its daemon"
            time.sleep(0.05)
        while servers(shared):  # its holder and its warm pane gone: the server with them
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        daemon.kill()
        daemon.wait()
        daemon.stdout.close()
        for server in servers(shared):
            os.kill(server, signal.SIGKILL)
    # The next daemon removes the dead one's FIFO.
    WarmPanes("tmux", shared).sweep()
    assert not Path(fifo).exists()


async def test_a_lazily_shared_server_starts_at_the_first_run(
    tmp_path: Path,
    sandbox: Sandbox,
) -> None:
    run = tmp_path / "home" / "run"
    shared = tmux_module.shared_socket(run)
    share_lazily(run)
    try:
        assert servers(shared) == [], "no server before a tmux run"
        manager = TmuxProcessManager(runtime_dir=run)
        spec = run_spec(tmp_path, "hal-l", "sleep 30")
        await manager.prestart(sandbox, spec)
        await manager.start(sandbox, spec)
        assert len(servers(shared)) == 1 and manager.socket(spec).is_symlink()
        await warm_pane(run)  # and the next run's warm pane, after this one's start
        await manager.stop(spec)
    finally:
        await unshare_server(run)
        for pid in servers(shared):
            os.kill(pid, signal.SIGKILL)
        shared.unlink(missing_ok=True)


async def test_a_failed_hand_over_runs_the_command_once_in_the_runs_own_pane(
    tmp_path: Path,
    runtime: Path,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    pane = await warm_pane(runtime)
    marker = tmp_path / "ran"
    spec = run_spec(tmp_path, "hal-f", f"echo once >> {marker}")
    real_run_host = tmux_module.run_host

    async def failing_rename(argv: list[str], **kwargs: object) -> tuple[int, str]:
        if "rename-session" in argv:
            await asyncio.sleep(0.5)  # the warm supervisor has read its run meanwhile
            raise ProcessError("tmux rename-session failed")
        return await real_run_host(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tmux_module, "run_host", failing_rename)
    with pytest.raises(ProcessError):
        await manager.prestart(sandbox, spec)
    monkeypatch.setattr(tmux_module, "run_host", real_run_host)
    await manager.start(sandbox, spec)  # as a task's start does after a failed prestart
    assert manager._panes[manager.socket(spec)][0] != pane.pid
    assert await wait_exit(manager, spec) == 0
    deadline = time.monotonic() + 10
    while procs.started(pane.pid) == pane.started:
        assert time.monotonic() < deadline, "the claimed pane outlived its failed hand-over"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert marker.read_text() == "once\n", "the command ran once, in the run's own pane"
    await manager.stop(spec)
