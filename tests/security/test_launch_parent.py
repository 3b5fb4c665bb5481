"""A command spawned as its hal dies runs nothing: the launcher, forked but
not yet in the sandbox's cgroup when hal dies, was seen by neither the stop's cgroup kill nor
its marker scan, and ran its command once it joined (bwrap's ``--die-with-parent``, set after
the parent's death, does not fire). Now hal passes ``--parent`` its pid
(``hostexec.parented``), and the launcher checks it after the joins: the static one with its
death signal set first, the script by ``/proc/$$/stat``.

The window is made wide with a join file that is a FIFO: the launcher's open of it blocks
until a reader comes, which the test sends only once the stand-in hal is dead. A subreaper
above the stand-in adopts the orphaned launcher, so its exit status is seen.

The static launcher is built here from ``scripts/hal-launch.c`` (the shared ``build/`` may
predate the option)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.keeper import kept

from hal9999.providers.base import Launch
from hal9999.providers.bwrap.provider import BwrapProvider
from hal9999.providers.host import exec as hostexec
from hal9999.spec import SandboxSpec, ShellCommand

SOURCE = Path(__file__).resolve().parents[2] / "scripts" / "hal-launch.c"
CC = shutil.which("musl-gcc")

# The subreaper: forks the stand-in hal, which spawns the launcher (PARENT in its argv made
# its own pid, as parented() does) and says its pid, waits until it is on its way to its join
# (the FIFO's open blocks it there); the stand-in then dies ("dies"), dies
# once the command has started ("dies-after"), or waits for it ("lives"). The subreaper
# opens the FIFO ("-": none; the launcher's join goes through) only after the stand-in's
# death when it dies first, then reaps the launcher (its child once orphaned) and prints its
# status.
REAPER = r"""
import ctypes, json, os, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
mode, fifo, started = sys.argv[1:4]
argv = sys.argv[4:]
r, w = os.pipe()
hal = os.fork()
if hal == 0:
    os.close(r)
    me = str(os.getpid())
    launcher = subprocess.Popen([me if a == "PARENT" else a for a in argv])
    os.write(w, str(launcher.pid).encode())
    os.close(w)
    # Past its start (the script checks $PPID there) and on its way to the FIFO's join: its
    # filter is open as fd 9 just before.
    # (Bounded, as every wait here: a launcher gone first fails the test, never hangs it.)
    # A hal that lives has nothing to wait for: the FIFO is opened at once, so its launcher
    # may be through its join and done before fd 9 is seen.
    deadline = time.monotonic() + 20
    while mode != "lives" and fifo != "-" and not os.path.exists(f"/proc/{launcher.pid}/fd/9"):
        if launcher.poll() is not None or time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.001)
    if mode == "lives":
        os._exit(launcher.wait() & 0xFF)
    while mode == "dies-after" and not os.path.exists(started):
        if launcher.poll() is not None or time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.01)
    os._exit(0)
os.close(w)
launcher = int(os.read(r, 64))
if mode == "dies":
    os.waitpid(hal, 0)
said = ""
if fifo != "-":
    with open(fifo) as joined:
        said = joined.read()
if mode == "lives":
    status = os.waitstatus_to_exitcode(os.waitpid(hal, 0)[1])
else:
    if mode == "dies-after":
        os.waitpid(hal, 0)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(launcher, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(launcher, 9)
        os.waitpid(launcher, 0)
        status = "alive"
    else:
        status = os.waitstatus_to_exitcode(done[1])
print(json.dumps({"status": status, "joined": said}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if CC is None:
        pytest.skip("musl-gcc is not installed")
    out = tmp_path_factory.mktemp("hal-launch") / "hal-launch"
    argv = [CC, "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(SOURCE)]
    subprocess.run(argv, check=True)
    return out


def _launcher(kind: str, built: Path) -> list[str]:
    if kind == "static":
        return [str(built), "--parent", "PARENT"]
    return ["/bin/sh", "-c", hostexec.LAUNCHER_SCRIPT, "hal-launch", "--parent", "PARENT"]


def _run(mode: str, launcher: list[str], tmp_path: Path, command: list[str]) -> dict[str, object]:
    fifo = tmp_path / "tasks"
    os.mkfifo(fifo)
    seccomp = tmp_path / "filter"
    seccomp.write_bytes(b"")
    argv = [*launcher, "box1", str(seccomp), "", str(fifo), "--", *command]
    return _reaped(mode, str(fifo), tmp_path / "started", argv)


def _reaped(
    mode: str, fifo: str, started: Path, argv: list[str], launch: Launch | None = None
) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", REAPER, mode, fifo, str(started), *argv],
        capture_output=True, text=True, timeout=60,
        env=launch.env if launch else None, cwd=launch.cwd if launch else None,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("mode", ["dies", "lives"])
@pytest.mark.parametrize("kind", ["static", "sh"])
def test_a_launcher_runs_its_command_only_for_a_hal_alive_after_its_join(
    built: Path, tmp_path: Path, kind: str, mode: str
) -> None:
    ran = tmp_path / "ran"
    result = _run(mode, _launcher(kind, built), tmp_path, ["touch", str(ran)])
    # It joined (its "0" reached the cgroup's file), then saw its hal gone: nothing ran. With
    # its hal alive, the command ran.
    joined = "0\n" if kind == "sh" else "0"
    assert result == {"status": 137 if mode == "dies" else 0, "joined": joined}
    assert ran.exists() == (mode == "lives")


def test_a_hal_that_dies_after_the_join_kills_the_static_launchers_command(
    built: Path, tmp_path: Path
) -> None:
    # The death signal, set before the check, is kept across the exec (bwrap, the network
    # wiring, or here the command itself): the command dies with the hal that spawned it.
    started = tmp_path / "started"
    command = ["sh", "-c", f"touch {started}; exec sleep 30"]
    result = _run("dies-after", _launcher("static", built), tmp_path, command)
    assert started.exists()
    assert result["status"] == -9


def test_no_keeper_starts_for_a_hal_already_dead(built: Path, tmp_path: Path) -> None:
    record = tmp_path / "keeper"
    ran = tmp_path / "ran"
    # This process's parent stands for a hal gone (the launcher re-parented).
    argv = [str(built), "--parent", str(os.getppid()), "--keep", str(record), "--",
            "touch", str(ran)]  # fmt: skip
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 137
    assert not ran.exists()
    assert not record.exists() and not Path(f"{record}.err").exists()


@pytest.mark.parametrize("parent", ["0", "x", "-5", "wrapped"])
def test_a_bad_parent_is_refused(built: Path, tmp_path: Path, parent: str) -> None:
    if parent == "wrapped":  # this process's pid once cut to 32 bits (made here: test ids
        parent = str(os.getpid() + (1 << 32))  # must be the same in every xdist worker)
    ran = tmp_path / "ran"
    argv = [str(built), "--parent", parent, "box1", "", "", "--", "touch", str(ran)]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    assert done.returncode == 125 and b"bad parent" in done.stderr
    assert not ran.exists()


def test_hal_gives_its_own_pid_to_a_launcher_it_spawns_and_no_other_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hostexec, "launch_helper", lambda: "/x/hal-launch")
    me = str(os.getpid())
    static = hostexec.launcher_argv("abc", ["j"], ["prog"])
    assert hostexec.parented(static) == ["/x/hal-launch", "--parent", me, *static[1:]]
    script = hostexec.launcher_argv("abc", ["j"], ["prog"], helper=None)
    assert hostexec.parented(script) == [*script[:4], "--parent", me, *script[4:]]
    # A wrapper's argv (the supervisor's, a terminal's): its launcher has another parent.
    assert hostexec.parented(["/usr/bin/python3", "-m", "x", "--", *static]) == [
        "/usr/bin/python3", "-m", "x", "--", *static
    ]  # fmt: skip


async def test_a_command_hal_streams_is_checked_against_hals_pid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    argv = hostexec.launcher_argv("abc", [], ["touch", str(ran)], helper=None)
    env = {"PATH": "/usr/bin:/bin"}
    ok = await hostexec.run(Launch(argv=argv, env=env), stdin=None, time_limit=30, what="t")
    assert ok.exit_code == 0 and ran.exists()
    ran.unlink()
    # stream() spawns what parented() makes of the argv: a parent not the launcher's runs
    # nothing.
    original = hostexec.parented
    monkeypatch.setattr(hostexec, "parented", lambda a: [*original(a)[:5], "1", *a[4:]])
    refused = await hostexec.run(Launch(argv=argv, env=env), stdin=None, time_limit=30, what="t")
    assert refused.exit_code == 137 and not ran.exists()


def _parented(argv: list[str], fifo: str | None = None) -> list[str]:
    """A sandbox's launch argv with ``--parent PARENT``, and ``fifo`` as its first join file
    (before the sandbox's cgroups: the launcher is in none while it waits there)."""
    at = 1
    while argv[at] == "--data":
        at += 3
    joins = at + 3  # the sandbox's id, its filter, its file size limit
    extra = [fifo] if fifo else []
    return [argv[0], "--parent", "PARENT", *argv[1:joins], *extra, *argv[joins:]]


@pytest.mark.bwrap
@pytest.mark.parametrize("mode", ["dies", "lives"])
async def test_a_bwrap_command_spawned_as_its_hal_dies_never_runs(
    built: Path, provider: BwrapProvider, tmp_path: Path, mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(hostexec, "launch_helper", lambda: str(built))
    (tmp_path / "ws").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "ws"))
    launch = box.launch(ShellCommand(script="touch ran"))
    assert "--enter" not in launch.argv
    fifo = tmp_path / "held"
    os.mkfifo(fifo)
    argv = _parented(launch.argv, str(fifo))
    result = await asyncio.to_thread(_reaped, mode, str(fifo), tmp_path / "-", argv, launch)
    if mode == "dies":
        assert result["status"] == 137
        assert not (tmp_path / "ws" / "ran").exists()
    else:
        assert result["status"] == 0
        assert (tmp_path / "ws" / "ran").exists()


@pytest.mark.bwrap
async def test_a_keepers_command_dies_with_the_hal_that_spawned_it(
    built: Path, provider: BwrapProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The launcher entering a keeper's namespaces is its PID namespace's monitor, outside:
    # it set no death signal, so a command hal spawned ran on once hal was dead.
    monkeypatch.setattr(hostexec, "launch_helper", lambda: str(built))
    box = await kept(provider, tmp_path)
    launch = box.launch(ShellCommand(script="touch started; exec sleep 30"))
    started = tmp_path / "a" / "started"
    argv = _parented(launch.argv)
    result = await asyncio.to_thread(_reaped, "dies-after", "-", started, argv, launch)
    assert started.exists()
    assert result["status"] == -9
    deadline = time.monotonic() + 10
    while hostexec.marked_pids(box.id) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not hostexec.marked_pids(box.id), "the command outlived its hal"
