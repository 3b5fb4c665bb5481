"""How a root hal's pooled bwrap sandbox gets its keeper (providers/bwrap/keeper.py): a keeper that
cannot start leaves a whole sandbox, a nested bind without its mount point runs under bwrap
first, a sandbox that never had a keeper scans for none, the keepers' sweep starts a thread only
when one is due, and a keeper's bwrap and execs are a command's."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from tests.security.conftest import pool_of, require_keeper, session_spec
from tests.support.keeper import claimed, run

from hal9999.errors import ProviderError
from hal9999.providers.bwrap import keeper, seccomp
from hal9999.providers.bwrap.provider import BwrapProvider, BwrapSandbox
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host import user as sandboxuser
from hal9999.spec import Bind, SandboxSpec, ShellCommand

pytestmark = pytest.mark.bwrap


async def keepable(provider: BwrapProvider, tmp_path: Path) -> BwrapSandbox:
    """A new sandbox over ``tmp_path/a``, with no keeper yet (skips where it can have none)."""
    (tmp_path / "a").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "a"))
    require_keeper(provider, box.id)
    assert isinstance(box, BwrapSandbox)
    return box


def calls_of(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple[Any, ...]]:
    """The positional arguments of each call of the coroutine function ``owner.name`` from now
    on (each still runs it)."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(owner, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


async def test_a_keeper_that_cannot_start_leaves_a_whole_sandbox(
    provider: BwrapProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = await keepable(provider, tmp_path)

    async def fails(*args: object, **kwargs: object) -> None:
        raise ProviderError("bwrap: no keeper today")

    monkeypatch.setattr(keeper, "start", fails)
    await provider.prime(box.id)  # logged, not raised: the pool keeps the sandbox
    handle = await provider.get(box.id)
    assert isinstance(handle, BwrapSandbox)
    assert "--enter" not in handle.launch(ShellCommand(script="true")).argv
    assert (await run(handle, "echo ok")).strip() == "ok"


async def test_a_nested_bind_without_its_mount_point_runs_under_bwrap_first(
    provider: BwrapProvider, hal_home: Path, tmp_path: Path
) -> None:
    pool = pool_of(provider, hal_home)

    def spec(n: int) -> SandboxSpec:
        return session_spec(
            tmp_path,
            n,
            Bind(source=Path("home"), target="/home/hal", read_only=False),
            Bind(source=Path("ref"), target="/home/hal/ref", read_only=True),
            files={"ref/note": f"ref {n}\n"},
        )

    try:
        assert await pool.warm(spec(0), 1) == 1
        async with claimed(pool, provider, spec(1), "t1") as box:
            # The session's home has no ref/ for the nested bind: bwrap makes it.
            assert "--enter" not in box.launch(ShellCommand(script="true")).argv
            assert (await run(box, "cat /home/hal/ref/note")).strip() == "ref 1"
            # Now it has: the keeper takes the session, nested bind and all.
            argv = box.launch(ShellCommand(script="true")).argv
            assert "--enter" in argv and "/home/hal/ref" in argv[: argv.index("--else")]
            out = await run(box, "cat /home/hal/ref/note; touch /home/hal/ref/x 2>&1 || echo ro")
            assert out.splitlines()[0] == "ref 1" and out.splitlines()[-1] == "ro", out
    finally:
        await pool.drain()


async def test_destroying_a_sandbox_that_never_had_a_keeper_scans_for_none(
    provider: BwrapProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = await keepable(provider, tmp_path)
    scans = calls_of(monkeypatch, hostexec, "kill_marked_by")
    await provider.destroy(box.id)
    scanned = [args[0] for args in scans]
    assert keeper.MARKER_VAR not in scanned, "a scan of every process for a keeper never started"


async def test_a_prime_starts_a_thread_for_the_keepers_sweep_only_when_one_is_due(
    provider: BwrapProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = await keepable(provider, tmp_path)
    hops = calls_of(monkeypatch, asyncio, "to_thread")
    # Swept just now: the sweep would return at once, and no thread is woken for it (issue
    # 16: one hop of every pool reset's prime).
    monkeypatch.setattr(keeper, "_swept", [time.monotonic()])
    await provider.prime(box.id)
    assert keeper.sweep not in [args[0] for args in hops]
    monkeypatch.setattr(keeper, "_swept", [time.monotonic() - keeper.SWEEP_EVERY])
    await provider.prime(box.id)
    assert [args[0] for args in hops].count(keeper.sweep) == 1


async def test_a_keepers_bwrap_is_a_commands_without_the_filter_fd_or_die_with_parent(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "a"))
    assert isinstance(box, BwrapSandbox)
    launched = box.launch(ShellCommand(script="true")).argv  # no keeper: a bwrap
    command = launched[launched.index(provider.bwrap) : launched.index("--chdir")]
    kept = box.keeper_argv()
    kept = kept[: kept.index("--chdir")]
    # A command dies with its launcher and reads the filter from its fd; the keeper does
    # neither (it outlives hal-launch --keep, which opens no filter).
    assert "--die-with-parent" in command
    assert ("--seccomp" in command) == seccomp.supported()
    assert "--die-with-parent" not in kept
    assert "--seccomp" not in kept
    # Otherwise the same sandbox: every other option of a command, in the same order.
    at = command.index("--seccomp") if "--seccomp" in command else len(command)
    without = [a for a in command[:at] + command[at + 2 :] if a != "--die-with-parent"]
    if os.geteuid() == 0:
        # A root hal's (the one that has keepers) mounts no /proc and binds nothing under
        # it (each command mounts its own over the keeper's): only the mount point is made.
        assert command[command.index("--proc") + 1] == "/proc"
        assert "--proc" not in kept
        at = without.index("--proc")
        without = [*without[:at], "--dir", "/proc", *without[at + 2 :]]
        proc_binds = [i for i, a in enumerate(without) if a.endswith("bind-try")]
        proc_binds = [i for i in proc_binds if without[i + 2].startswith("/proc/")]
        assert proc_binds, "a command binds /proc's host-wide writers read-only"
        for i in reversed(proc_binds):
            del without[i : i + 3]
    assert kept == without


async def traced_keeper(
    provider: BwrapProvider, tmp_path: Path, *options: str
) -> tuple[BwrapSandbox, str, Path, Path, asyncio.subprocess.Process]:
    """A new sandbox's keeper, its launcher run by hand under ``strace options`` (skips where
    it can have no keeper, or no build/hal-drop): the sandbox, the launcher, the directory of
    the keeper's record, the trace, and strace's process."""
    (tmp_path / "a").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "a"))
    assert isinstance(box, BwrapSandbox)
    require_keeper(provider, box.id)
    if provider.drop_helper is None:
        pytest.skip("no build/hal-drop")
    helper = hostexec.launch_helper()
    assert helper is not None
    run, log = tmp_path / "run", tmp_path / "trace"
    run.mkdir()
    env = {keeper.MARKER_VAR: str(provider.store.dir(box.id)), "PATH": "/usr/bin:/bin"}
    traced = await asyncio.create_subprocess_exec(
        "strace", *options, "-o", str(log),
        helper, *hostexec.data_args(box.data), "--keep", str(run / keeper.KEEPER_FILE), "--",
        *box.keeper_argv(), env=env, cwd="/", stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return box, helper, run, log, traced


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
async def test_a_keeper_is_the_launchers_bwraps_and_the_uid_switchs_execs(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    # The uid switch waits itself (`hal-drop UID --wait`): its exec of `sleep infinity` is
    # gone (4 execs before, one a task: the pool starts a keeper at each reset).
    box, helper, run, log, traced = await traced_keeper(
        provider, tmp_path, "-f", "-qq", "-e", "trace=execve", "-e", "status=successful"
    )
    try:
        deadline = time.monotonic() + 30
        while (kept := keeper.read(run)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert kept is not None, "the keeper did not start"
        # Recorded once switched: it may still be on its way to sleep.
        uid = f"Uid:\t{box.uid}\t{box.uid}\t{box.uid}\t{box.uid}"
        while not {uid, "State:\tS (sleeping)"} <= set(
            (status := Path(f"/proc/{kept.pid}/status").read_text()).splitlines()
        ):
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)
        assert "CapBnd:\t0000000000000000" in status, status
    finally:
        keeper.stop(run)
        await asyncio.wait_for(traced.wait(), 30)
    programs = [line.split('"')[1] for line in log.read_text().splitlines() if "execve(" in line]
    assert programs == [helper, provider.bwrap, sandboxuser.DROP_HELPER], programs


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
async def test_a_keepers_launcher_waits_for_the_uid_switch_to_close_its_fds(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    # The launcher learns that the keeper is up from the end of file of a pipe only the
    # waiting uid switch holds last (it closes every fd above 2), then reads bwrap's PID 1's
    # children once: no reading them in a tight loop while bwrap sets the sandbox up (under
    # strace, dozens of reads a keeper before).
    box, _, run, log, traced = await traced_keeper(
        provider, tmp_path, "-qq", "-e", "trace=open,openat,nanosleep,clock_nanosleep"
    )
    try:
        assert await asyncio.wait_for(traced.wait(), 30) == 0
        assert box.keeper_argv()[-1] == "--wait"
        kept = keeper.read(run)
        assert kept is not None, "the keeper did not start"
        # Recorded once switched, holding nothing but its standard fds (it may not be
        # asleep yet).
        status = Path(f"/proc/{kept.pid}/status").read_text()
        assert f"Uid:\t{box.uid}\t{box.uid}\t{box.uid}\t{box.uid}" in status, status
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{kept.pid}/fd")) == [0, 1, 2]
    finally:
        keeper.stop(run)
    calls = log.read_text().splitlines()
    assert sum("/children" in line for line in calls) == 1, calls
    assert not [line for line in calls if "nanosleep(" in line], calls
