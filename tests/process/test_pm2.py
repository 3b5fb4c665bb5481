"""What the pm2 process manager promises beyond the shared suite, against real PM2 from npm:
the restart policy, the ecosystem payload (no secret in argv or left on disk), logs, and the
host-side run for bwrap sandboxes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.pm2_home import pm2_manager
from tests.support.pm2 import failing_runs, runs, spec_for

from hal9999.errors import ProcessError
from hal9999.process import launch
from hal9999.process.base import ProcessStatus
from hal9999.process.pm2 import Pm2ProcessManager, last_lines
from hal9999.providers.base import Sandbox
from hal9999.providers.registry import load_provider
from hal9999.spec import ArgvCommand, RestartPolicy, SandboxSpec

pytestmark = [pytest.mark.pm2, pytest.mark.timeout(120)]


@pytest.fixture
async def pm2() -> AsyncIterator[Pm2ProcessManager]:
    async with pm2_manager() as manager:
        yield manager


async def test_restart_policy_comes_from_the_spec(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    never, again = tmp_path / "never", tmp_path / "again"
    once = spec_for(tmp_path, f"echo run >> {never}; exit 3")
    await pm2.start(sandbox, once)
    assert await runs(never, 2, timeout=4) == 1, "never: no restart"
    failing = spec_for(
        tmp_path / "b",
        f"echo run >> {again}; exit 3",
        RestartPolicy(mode="on-failure", max_restarts=2),
    )
    await pm2.start(sandbox, failing)
    assert await runs(again, 3) == 3, "the first run and two restarts"
    await asyncio.sleep(2)
    assert len(again.read_text().splitlines()) == 3, "no more than max_restarts"
    app = await pm2._app(failing)
    assert app is not None and app["pm2_env"]["status"] in ("errored", "stopped")
    await pm2.stop(failing)
    await pm2.stop(once)


async def test_max_restarts_holds_for_runs_longer_than_pm2s_min_uptime(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # PM2 counts an exit toward max_restarts only when its run was shorter than min_uptime
    # (hal's was 5 s): runs failing after 5.5 s were restarted for ever.
    counter, spec = failing_runs(tmp_path, 5.5)
    await pm2.start(sandbox, spec)
    deadline = time.monotonic() + 25
    state = None
    while time.monotonic() < deadline and await runs(counter, 0) < 3:
        app = await pm2._app(spec)
        state = (app or {}).get("pm2_env", {}).get("status")
        if state == "errored":
            break
        await asyncio.sleep(0.3)
    assert len(counter.read_text().splitlines()) == 2, "the first run and one restart"
    assert state == "errored", "PM2 gave up after max_restarts"
    await pm2.stop(spec)


async def test_a_failed_run_with_a_restart_to_come_is_still_running(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # Each run's supervisor writes the exit file: status() read it first, and a service was
    # "exited" while PM2 restarted it (hal's follower then stopped it).
    counter, spec = failing_runs(tmp_path, 2)
    await pm2.start(sandbox, spec)
    assert await runs(counter, 2) == 2
    assert spec.exit_path.read_text().strip() == "3", "the first run's exit file is there"
    assert (await pm2.status(spec)).state == "running"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (await pm2.status(spec)).state == "running":
        await asyncio.sleep(0.2)
    assert (await pm2.status(spec)) == ProcessStatus("exited", 3)
    assert len(counter.read_text().splitlines()) == 2
    await pm2.stop(spec)


async def test_a_supervisor_killed_by_a_signal_is_a_failure_to_pm2(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # PM2 reports an app killed by a signal as exit 0: a supervisor the OOM killer ended was
    # a success to it, and an on-failure app was not restarted.
    counter, spec = failing_runs(tmp_path, 6)
    await pm2.start(sandbox, spec)
    assert await runs(counter, 1) == 1
    supervisors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] == launch.SUPERVISOR[0].encode() and str(spec.exit_path).encode() in argv:
            supervisors.append(int(pid))
    [supervisor] = supervisors
    os.kill(supervisor, signal.SIGKILL)
    assert await runs(counter, 2) == 2, "restarted: a death by signal is a failure"
    app = await pm2._app(spec)
    assert app is not None and app["pm2_env"]["exit_code"] == 128 + signal.SIGKILL
    await pm2.stop(spec)


async def test_the_ecosystem_payload_leaves_nothing_on_disk_and_logs_are_masked(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    secret = "pm2-secret-value-0123456789"
    spec = spec_for(tmp_path, 'echo "token=$API_KEY"; echo second-line; sleep 30')
    await pm2.start(sandbox, spec, env={"API_KEY": secret})
    assert list((pm2.home / "apps").iterdir()) == [], "the payload is removed once read"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        not spec.log_path.exists() or "second-line" not in spec.log_path.read_text()
    ):
        await asyncio.sleep(0.1)
    logs = await pm2.logs(spec)
    assert "token=[REDACTED]" in logs and secret not in logs
    for kept in (pm2.home / "logs").iterdir():
        assert secret not in kept.read_text(), f"{kept} holds the secret"
    assert (await pm2.status(spec)).state == "running"
    attach = pm2.attach_command(spec)
    assert attach is not None and pm2.app_name(spec) in attach
    await pm2.stop(spec)
    assert (await pm2.status(spec)).state in ("exited", "missing")
    await pm2.stop(spec)  # idempotent


async def test_logs_are_hals_capped_log_and_pm2_keeps_no_copy(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # PM2 kept its own copy of the output: all of it, past the log cap (1.3 MB here), in a
    # file per task under HAL_PM2_HOME that nothing removed; logs() returned that copy.
    spec = spec_for(tmp_path, "seq 200000").model_copy(update={"log_cap": 65536})
    await pm2.start(sandbox, spec)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (await pm2.status(spec)).state != "exited":
        await asyncio.sleep(0.1)
    assert (await pm2.status(spec)) == ProcessStatus("exited", 0)
    assert await pm2.logs(spec, lines=3) == "199998\n199999\n200000\n"
    assert spec.log_path.stat().st_size < 65536
    kept = sum(p.stat().st_size for p in pm2.home.rglob("*") if p.is_file())
    assert kept < 65536, f"PM2's home holds {kept} bytes"
    await pm2.stop(spec)


def test_logs_of_a_capped_run_going_on_end_with_its_tail_segments(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("head-1\nhead-2\n")  # the head; the live tail is in the segments
    older, newer = tmp_path / ".out.log.tail-1", tmp_path / ".out.log.tail-0"
    older.write_text("tail-1\ntail-2\n")
    newer.write_text("tail-3\n")
    os.utime(older, ns=(1_000_000_000, 1_000_000_000))
    assert last_lines(log, 3) == "tail-1\ntail-2\ntail-3\n"
    assert last_lines(log, 5) == "head-1\nhead-2\ntail-1\ntail-2\ntail-3\n"
    assert last_lines(tmp_path / "none.log", 3) == ""


async def test_errors_are_one_line(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, "true")
    assert (await pm2.status(spec)).state == "missing"  # no daemon yet: none is started
    assert not (pm2.home / "rpc.sock").exists()
    missing = Pm2ProcessManager(home=pm2.home)
    missing._pm2 = None
    with pytest.raises(ProcessError) as info:
        await missing.start(sandbox, spec)  # logs() reads hal's log: no PM2 needed there
    assert info.value.hint == "bash scripts/install-pm2.sh"


@pytest.mark.bwrap
async def test_a_bwrap_sandbox_runs_under_pm2_from_the_host(
    pm2: Pm2ProcessManager, hal_home: Path, tmp_path: Path
) -> None:
    provider = load_provider("bwrap", state_dir=hal_home / "bwrap")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    async with await provider.create(SandboxSpec(provider="bwrap", workspace=workspace)) as sb:
        spec = spec_for(tmp_path, "echo inside > made-by-agent; cat /proc/1/cmdline | tr '\\0' ' '")
        await pm2.start(sb, spec)
        deadline = time.monotonic() + 20
        while (await pm2.status(spec)).state == "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (await pm2.status(spec)).exit_code == 0
        assert (workspace / "made-by-agent").read_text() == "inside\n"
        assert "PM2" not in spec.log_path.read_text(), "PID 1 inside is bwrap's, not PM2's"


async def test_a_program_path_with_a_space_runs_with_its_arguments(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PM2 turns a `script` holding a space into `bash -c SCRIPT` and drops its args: hal
    # installed under such a path (the supervisor is its python) failed every run with 127.
    spaced = tmp_path / "my tools; $(x)"
    spaced.mkdir()
    (spaced / "python").symlink_to(sys.executable)
    monkeypatch.setattr(launch, "SUPERVISOR", (str(spaced / "python"), *launch.SUPERVISOR[1:]))
    command = ArgvCommand(argv=("sh", "-c", 'echo "ran with $# args: $1"', "hal", "a b", "c;"))
    spec = spec_for(tmp_path, "true").model_copy(update={"command": command})
    await pm2.start(sandbox, spec)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (await pm2.status(spec)).state != "exited":
        await asyncio.sleep(0.1)
    assert (await pm2.status(spec)) == ProcessStatus("exited", 0)
    assert spec.log_path.read_text().strip() == "ran with 2 args: a b"


async def test_a_run_that_ended_leaves_no_app_holding_its_secrets_in_the_daemon(
    pm2: Pm2ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # A stopped app kept its env (the run's secrets) in PM2's daemon for as long as the
    # daemon lived, shown by `pm2 jlist` to any process of this user.
    secret = "pm2-ended-secret-5e8a1c07"
    for round_ in range(2):  # and again for the next run of the same spec (a resume)
        spec = spec_for(tmp_path, 'echo "token=$API_KEY"')
        spec.exit_path.unlink(missing_ok=True)
        await pm2.start(sandbox, spec, env={"API_KEY": secret})
        deadline = time.monotonic() + 20
        while (status := await pm2.status(spec)).state != "exited":
            assert time.monotonic() < deadline, f"round {round_}: still {status}"
            await asyncio.sleep(0.1)
        assert status.exit_code == 0
        assert await pm2._app(spec) is None, f"round {round_}: the ended app is still in PM2"
        _, listed = await pm2._run("jlist")
        assert secret not in listed
