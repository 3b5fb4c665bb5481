"""The tmux server a daemon shares among its runs: one server start for many runs,
each pane with exactly its own run's environment (never in argv), a stop that ends one run
and nothing of another's, and a server that ends with its holder's process and last run."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest
from tests.support.process import run_spec, servers, wait_exit

from hal9999 import procs
from hal9999.process import tmux as tmux_module
from hal9999.process.tmux import TmuxProcessManager, unshare_server
from hal9999.providers.base import Sandbox

pytestmark = pytest.mark.tmux


async def test_runs_share_one_server_each_pane_its_own_environment(
    tmp_path: Path, runtime: Path, sandbox: Sandbox
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    shared = tmux_module.shared_socket(runtime)
    assert len(servers(shared)) == 1
    script = 'env > "$OUT"; echo "${SECRET_A:-}${SECRET_B:-}"; sleep 30'
    specs = []
    for name, var in (("hal-a", "SECRET_A"), ("hal-b", "SECRET_B")):
        out = tmp_path / f"{name}.env"
        spec = run_spec(tmp_path, name, script)
        await manager.start(sandbox, spec, env={var: f"value-of-{name}", "OUT": str(out)})
        specs.append((spec, out))
    for spec, out in specs:
        deadline = time.monotonic() + 20
        while not out.exists() or "TMUX_PANE" not in out.read_text():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert (await manager.status(spec)).state == "running"
    # One server for both runs (a run's own server would be a second and a third), its
    # sockets in a directory only this user reaches.
    assert len(servers(shared)) == 1
    assert servers(manager.socket(specs[0][0])) == []
    assert stat.S_IMODE(os.stat(shared.parent).st_mode) == 0o700
    env_a = specs[0][1].read_text()
    env_b = specs[1][1].read_text()
    assert "SECRET_A=value-of-hal-a" in env_a and "SECRET_B" not in env_a
    assert "SECRET_B=value-of-hal-b" in env_b and "SECRET_A" not in env_b
    assert "LD_PRELOAD" not in env_a + env_b
    # No secret on any command line of the server or its clients.
    for pid in servers(shared):
        assert b"value-of" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # Attach names the run's own session on the shared server, exactly.
    attach = manager.attach_command(specs[0][0])
    key = manager.socket(specs[0][0]).name[:8]
    assert attach is not None and attach[-1] == f"=hal-a-{key}:"
    # Stopping one run ends its session and leaves the other running.
    pane_b = manager._panes[manager.socket(specs[1][0])]
    await manager.stop(specs[0][0])
    await wait_exit(manager, specs[0][0])  # its supervisor ended it, and said so
    assert procs.started(pane_b[0]) == pane_b[1]
    # A manager of another process (the next daemon, `hal task attach`) finds the run.
    other = TmuxProcessManager(runtime_dir=runtime)
    assert (await other.status(specs[1][0])).state == "running"
    await other.stop(specs[1][0])
    await wait_exit(manager, specs[1][0])
    assert len(servers(shared)) == 1  # held by the daemon's holder


async def test_a_run_ends_and_its_exit_status_is_read(
    tmp_path: Path, runtime: Path, sandbox: Sandbox
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    spec = run_spec(tmp_path, "hal-c", "exit 3")
    await manager.start(sandbox, spec)
    assert await wait_exit(manager, spec) == 3
    await manager.stop(spec)
    assert not manager.socket(spec).is_symlink()


async def test_the_server_ends_with_its_holder_and_last_run(
    tmp_path: Path, runtime: Path, sandbox: Sandbox
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    shared = tmux_module.shared_socket(runtime)
    spec = run_spec(tmp_path, "hal-d", "sleep 30")
    await manager.start(sandbox, spec)
    (server,) = servers(shared)
    await unshare_server(runtime)  # as the daemon's end (or its death) closes the FIFO
    await asyncio.sleep(0.3)
    assert servers(shared) == [server]  # the running agent keeps it
    assert (await manager.status(spec)).state == "running"
    await manager.stop(spec)
    deadline = time.monotonic() + 10
    while servers(shared):
        assert time.monotonic() < deadline, "the shared server outlived its last run"
        await asyncio.sleep(0.05)


async def test_a_dead_shared_server_is_started_again(
    tmp_path: Path, runtime: Path, sandbox: Sandbox
) -> None:
    manager = TmuxProcessManager(runtime_dir=runtime)
    shared = tmux_module.shared_socket(runtime)
    spec = run_spec(tmp_path, "hal-e", "sleep 30")
    await manager.start(sandbox, spec)
    (server,) = servers(shared)
    os.kill(server, 9)
    deadline = time.monotonic() + 10
    while (await manager.status(spec)).state == "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # Not lost silently: the terminal's SIGHUP came before the supervisor, still starting,
    # set its handlers (it died with nothing to report: missing) or after (it passed SIGHUP
    # on and wrote the hangup's 129). Which is a race; on load (CI) either.
    gone = await manager.status(spec)
    assert (gone.state, gone.exit_code) in {("missing", None), ("exited", 128 + 1)}
    again = run_spec(tmp_path, "hal-f", "sleep 30")
    await manager.start(sandbox, again)
    assert (await manager.status(again)).state == "running"
    assert len(servers(shared)) == 1
    await manager.stop(again)


async def test_an_adopted_runs_link_goes_when_its_adopter_sees_it_end(
    tmp_path: Path, runtime: Path, sandbox: Sandbox
) -> None:
    flag = tmp_path / "end"
    script = f"while [ ! -e {flag} ]; do sleep 0.05; done"
    manager = TmuxProcessManager(runtime_dir=runtime)
    spec = run_spec(tmp_path, "hal-e", script)
    await manager.start(sandbox, spec)
    link = manager.socket(spec)
    assert link.is_symlink()
    adopter = TmuxProcessManager(runtime_dir=runtime)  # the next daemon's: it did not start it
    assert (await adopter.status(spec)).state == "running"
    flag.touch()
    assert await wait_exit(adopter, spec) == 0
    assert not os.path.lexists(link)  # its maker never saw the end: its adopter removed it
