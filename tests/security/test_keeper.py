"""A root hal's pooled bwrap sandbox runs its commands in its keeper's namespaces
(providers/bwrap/keeper.py, ``hal-launch --enter``): each command still has a PID namespace and a
/proc of its own, a claim's session is what the next command sees (read-only where bound so),
a keeper that is gone or a record that names anything but a keeper never gives a command the
host's namespaces, and nothing of a keeper outlives its sandbox.

The boundary tests (test_boundary.py) run on the keeper path too."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tests.security.conftest import pool_of, session_spec
from tests.support.keeper import claimed, kept, run

from hal9999.providers.bwrap import keeper
from hal9999.providers.bwrap.provider import RUN_DIR, BwrapProvider, BwrapSandbox
from hal9999.providers.host import exec as hostexec
from hal9999.spec import ArgvCommand, Bind, SandboxSpec, ShellCommand

pytestmark = pytest.mark.bwrap


async def test_each_command_has_its_own_pid_namespace_and_proc(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    box = await kept(provider, tmp_path)
    sleeper = asyncio.ensure_future(box.exec(ShellCommand(script="sleep 30"), timeout=60))
    try:
        await asyncio.sleep(0.3)
        seen = await run(box, "echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '")
    finally:
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
    own_pid, pids = seen.splitlines()
    assert own_pid == "2", "the command is PID 2 under a minimal init"
    # Its init, itself and its ls/grep/sort/tr: no keeper, no sleep of the other command.
    assert "1" in pids.split() and all(int(p) < 10 for p in pids.split()), pids
    # Its PID 1 (uid 0, as bwrap's reaper) keeps no capability, and has the filter.
    status = await run(box, "grep -E '^(Cap(Prm|Eff|Bnd)|NoNewPrivs|Seccomp):' /proc/1/status")
    fields = dict(line.split()[:2] for line in status.splitlines())
    assert fields == {
        "CapPrm:": "0000000000000000", "CapEff:": "0000000000000000",
        "CapBnd:": "0000000000000000", "NoNewPrivs:": "1", "Seccomp:": "2",
    }, status  # fmt: skip


async def test_a_command_never_sees_its_init_privileged(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    # PID 1 drops its capabilities and loads the filter after it forks the command, which
    # used to run without waiting for that: 38 of 200 quick commands saw their init with
    # every capability, no no_new_privs and no filter (the order left to the scheduler).
    box = await kept(provider, tmp_path)
    probe = ArgvCommand(
        argv=("grep", "-E", "^(CapEff|CapBnd|NoNewPrivs|Seccomp):", "/proc/1/status")
    )
    seen: list[list[str]] = []
    for _ in range(100):
        result = await box.exec(probe, timeout=60)
        assert result.ok, result.stderr.decode()
        seen.append(result.text().split())
    dropped = ["CapEff:", "0" * 16, "CapBnd:", "0" * 16, "NoNewPrivs:", "1", "Seccomp:", "2"]
    assert [s for s in seen if s != dropped] == []


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
async def test_a_command_is_two_execs_the_launcher_and_the_command(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    # The launcher switches the command's process to the sandbox uid itself (hal-drop.h), so
    # a command is the launcher's exec and the command's: hal-drop's exec in between is gone
    # (3 execs before); and what hal-drop left it (and its PID 1) is what it has.
    box = await kept(provider, tmp_path)
    if not hostexec.launch_helper_drops() or provider.drop_helper is None:
        pytest.skip("no build/hal-launch with --uid, or no build/hal-drop")
    launch = box.launch(ArgvCommand(argv=("cat", "/proc/self/status", "/proc/1/status")))
    log = tmp_path / "trace"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "status=successful", "-o", str(log),
         *launch.argv],
        env=launch.env, cwd=launch.cwd, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    programs = [line.split('"')[1] for line in log.read_text().splitlines() if "execve(" in line]
    assert programs == [launch.argv[0], "/usr/bin/cat"], programs
    own, init = done.stdout.decode().split("Name:")[1:]
    uid = str(box.uid)
    for line in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{line}:\t0000000000000000" in own, own
    for line in ("CapPrm", "CapEff", "CapBnd"):
        assert f"{line}:\t0000000000000000" in init, init
    for status in (own, init):
        assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status, status
    ids = [line.split() for line in own.splitlines() if line.startswith(("Uid", "Gid"))]
    assert all(field == uid for row in ids for field in row[1:]), ids
    assert [line.split() for line in own.splitlines() if line.startswith("Groups:")] == [
        ["Groups:"]
    ]


async def test_a_claimed_session_is_what_the_next_command_sees(
    provider: BwrapProvider, hal_home: Path, tmp_path: Path
) -> None:
    pool = pool_of(provider, hal_home)

    def spec(n: int) -> SandboxSpec:
        return session_spec(
            tmp_path,
            n,
            Bind(source=Path("input"), target="/hal", read_only=True),
            files={"input/prompt": f"task {n}\n"},
        )

    try:
        assert await pool.warm(spec(0), 1) == 1
        for n in (1, 2):
            async with claimed(pool, provider, spec(n), f"t{n}") as box:
                assert "--enter" in box.launch(ShellCommand(script="true")).argv
                await box.adopt(box.workdir)  # as a task does with its checkout
                out = await run(
                    box, "cat /hal/prompt; touch /workspace/mine; touch /hal/x 2>&1 || echo ro"
                )
                assert out.splitlines()[0] == f"task {n}"
                assert out.splitlines()[-1] == "ro", out
                assert (tmp_path / f"s{n}" / "workspace" / "mine").exists()
                assert not (tmp_path / f"s{n}" / "input" / "x").exists()
                # A second command finds the session attached already.
                assert "--attach" not in box.launch(ShellCommand(script="true")).argv
    finally:
        await pool.drain()


async def test_a_rebuilt_uid_switch_is_bound_anew_and_never_replaced(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    # The uid switch rebuilt while commands start in the keeper at once: each version is
    # installed under its own name and attached by the next commands. It used to be
    # replaced at one name, and a source unlinked between the launcher's open_tree and
    # move_mount failed the command (ENOENT; 123 of 200 while it was replaced in a loop).
    box = await kept(provider, tmp_path)
    if provider.drop_helper is None or "/.hal/hal-drop" not in " ".join(
        box.launch(ShellCommand(script="true")).argv
    ):
        pytest.skip("no build/hal-drop: commands switch uid with setpriv")
    helper = tmp_path / "hal-drop"
    shutil.copyfile(provider.drop_helper, helper)
    helper.chmod(0o755)
    provider.drop_helper = str(helper)
    record = provider.store.load(box.id)
    versions: list[Path] = []
    failed: list[str] = []
    for n in range(40):
        with helper.open("ab") as file:  # a rebuild: other bytes, still the program
            file.write(b"\0")
        os.utime(helper, ns=(n, 1_700_000_000_000_000_000 + n))
        provider.share(record)
        versions.append(provider.drop_file)
        handles = [await provider.get(box.id) for _ in range(6)]
        results = await asyncio.gather(
            *(h.exec(ShellCommand(script="true"), timeout=60) for h in handles)
        )
        failed += [r.stderr.decode() for r in results if not r.ok]
    assert failed == []
    assert len(set(versions)) == 40 and all(v.is_file() for v in versions)  # none replaced
    info = keeper.read(provider.store.dir(box.id) / RUN_DIR)
    assert info is not None
    mounts = Path(f"/proc/{info.pid}/mountinfo").read_text().split("\n")
    assert sum(" /.hal/hal-drop " in line for line in mounts) == 1  # none stacked


async def test_commands_take_turns_on_the_keepers_mounts(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    # A command that attaches holds the keeper's namespace file exclusively, one that only
    # copies the mounts holds it shared: interleaved, a command copied the mounts while
    # another had a target unmounted (its program missing: EACCES) or mounted onto
    # another's mount (6 of 240 commands at once failed before the lock).
    box = await kept(provider, tmp_path)
    info = keeper.read(provider.store.dir(box.id) / RUN_DIR)
    assert info is not None
    await run(box, "true")  # the binds attached: the next command copies only
    fd = os.open(f"/proc/{info.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as another command copying the mounts
        assert await run(await provider.get(box.id), "echo copied") == "copied\n"
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another command attaching
        waiting = asyncio.ensure_future(run(await provider.get(box.id), "echo after"))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # it waits for the attach to end
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert await asyncio.wait_for(waiting, 30) == "after\n"
        if provider.drop_helper is not None:  # a rebuilt uid switch: the next one attaches
            helper = tmp_path / "hal-drop"
            shutil.copyfile(provider.drop_helper, helper)
            helper.chmod(0o755)
            provider.drop_helper = str(helper)
            provider.share(provider.store.load(box.id))
            attaching = await provider.get(box.id)
            assert "--attach" in attaching.launch(ShellCommand(script="true")).argv
            fcntl.flock(fd, fcntl.LOCK_SH)  # another command copying the mounts
            waiting = asyncio.ensure_future(run(attaching, "echo attached"))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # it waits for the copy to end
            fcntl.flock(fd, fcntl.LOCK_UN)
            assert await asyncio.wait_for(waiting, 30) == "attached\n"
    finally:
        os.close(fd)


async def test_a_dead_keeper_means_bwrap(provider: BwrapProvider, tmp_path: Path) -> None:
    box = await kept(provider, tmp_path)
    found = keeper.read(box.dir / RUN_DIR)
    assert found is not None
    os.kill(found.pid, 9)
    for _ in range(100):
        if not found.alive():
            break
        await asyncio.sleep(0.01)
    argv = box.launch(ShellCommand(script="true")).argv
    assert "--enter" not in argv and any(a.endswith("bwrap") for a in argv)
    assert (await run(box, "echo ok")).strip() == "ok"


@pytest.mark.parametrize("how", ["killed", "replaced"])
async def test_a_keeper_gone_after_hal_read_it_means_bwrap_for_that_command(
    provider: BwrapProvider, tmp_path: Path, how: str
) -> None:
    # The keeper ends (killed, or replaced by a fresh one: a reset, a prime) between hal's
    # read of its record and the launcher's open of its namespaces. The command used to fail
    # (125, "open /proc/PID/ns/mnt: No such file or directory": 1 of 240 commands of
    # test_a_rebuilt_uid_switch_is_bound_anew_and_never_replaced on a loaded host); it runs
    # under bwrap instead, as every command does once hal finds the keeper dead.
    box = await kept(provider, tmp_path)
    found = keeper.read(box.dir / RUN_DIR)
    assert found is not None
    # Its account files' pipes are bwrap's only: a command entering the keeper gets no fd.
    assert (await run(box, "cat /proc/1/comm; ls /proc/self/fd")).split() == [
        "hal-launch", "0", "1", "2", "3",
    ]  # fmt: skip
    launch = box.launch(ShellCommand(script="cat /proc/1/comm; id -un; touch /workspace/ran"))
    assert "--enter" in launch.argv and str(found.pid) in launch.argv
    if how == "killed":
        os.kill(found.pid, 9)
    else:
        await provider.prime(box.id)  # stops the keeper, starts another
        assert keeper.read(box.dir / RUN_DIR) not in (None, found)
    for _ in range(500):
        if not found.alive():
            break
        await asyncio.sleep(0.01)
    assert not found.alive()
    proc = await asyncio.create_subprocess_exec(
        *launch.argv, env=launch.env, cwd=launch.cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    init, user = out.decode().split()
    assert init == "bwrap"  # not hal-launch's init in a keeper's namespaces
    assert user == (await run(box, "id -un")).strip()  # the account files bwrap reads
    assert (tmp_path / "a" / "ran").exists()


@pytest.mark.parametrize("forged", ["the launcher's own", "a reused pid"])
async def test_a_record_naming_no_keeper_stops_the_command(
    provider: BwrapProvider, tmp_path: Path, forged: str
) -> None:
    box = await kept(provider, tmp_path)
    record = box.dir / RUN_DIR / keeper.KEEPER_FILE
    real = keeper.read(box.dir / RUN_DIR)
    assert real is not None
    launch = box.launch(ShellCommand(script="touch /workspace/ran"))
    argv = list(launch.argv)
    at = argv.index("--enter")
    if forged == "the launcher's own":
        # What a forged record would name: a process in the host's namespaces (ours).
        argv[at + 1] = str(os.getpid())
        argv[at + 2] = str(os.stat("/proc/self/ns/mnt").st_ino)
    else:
        argv[at + 1] = str(os.getpid())  # alive, but not holding the keeper's namespace
    proc = await asyncio.create_subprocess_exec(
        *argv, env=launch.env, cwd=launch.cwd, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 125, err
    assert b"hal-launch" in err
    assert not (tmp_path / "a" / "ran").exists(), "the command never ran"
    assert record.exists()


async def gone(box: BwrapSandbox) -> bool:
    """Whether no process is marked as ``box``'s keeper (a killed one may take a few ms to
    exit)."""
    for _ in range(200):
        if not hostexec._pids_marked(keeper.MARKER_VAR, str(box.dir)):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_nothing_of_a_keeper_outlives_its_sandbox(
    provider: BwrapProvider, tmp_path: Path
) -> None:
    box = await kept(provider, tmp_path)
    assert hostexec._pids_marked(keeper.MARKER_VAR, str(box.dir))
    await provider.destroy(box.id)
    assert await gone(box)
    # And when its record went missing: found by its marker.
    again = await kept(provider, tmp_path, "b")
    (again.dir / RUN_DIR / keeper.KEEPER_FILE).unlink()
    await provider.destroy(again.id)
    assert await gone(again)
    # And when its whole directory went (a HAL_HOME removed by hand): the next sweep.
    third = await kept(provider, tmp_path, "c")
    away = third.dir.with_name("away")
    third.dir.rename(away)
    try:
        assert keeper.sweep(now=time.monotonic() + keeper.SWEEP_EVERY * 2) >= 1
        assert await gone(third)
    finally:
        away.rename(third.dir)  # for the fixture's destroy (its cgroup, its uid)
