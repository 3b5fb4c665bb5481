"""The checkout's host git dies with its hal: the static launcher's ``--dies-with``
sets the death signal and checks hal is still its parent in one exec, where ``setpriv`` and
an ``sh`` took two; a launcher built without it keeps that chain. Counted, not timed.

The launcher is built here from ``scripts/hal-launch.c`` (the shared ``build/`` may predate
the option)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hal9999.providers.host import exec as hostexec
from hal9999.tasks import gitrepo

SOURCE = Path(__file__).resolve().parents[2] / "scripts" / "hal-launch.c"

# As scripts/setup.sh builds it (musl's headers: glibc's redefine what the source spells out).
CC = shutil.which("musl-gcc")

pytestmark = pytest.mark.skipif(CC is None, reason="musl-gcc is not installed")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hal-launch") / "hal-launch"
    assert CC is not None
    argv = [CC, "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(SOURCE)]
    subprocess.run(argv, check=True)
    return out


@pytest.fixture
def launcher(built: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hostexec, "launch_helper", lambda: str(built))
    return built


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, ...]]]:
    """The argv of every process :func:`gitrepo.git` spawns."""
    calls: list[tuple[str, ...]] = []
    original = gitrepo.run_captured

    async def recorded(argv: Sequence[str], **kwargs: Any) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return await original(argv, **kwargs)

    monkeypatch.setattr(gitrepo, "run_captured", recorded)
    yield calls


def _before_git(argv: tuple[str, ...]) -> list[str]:
    """The programs a spawned argv execs before git."""
    head = list(argv[: argv.index("git")])
    return [os.path.basename(w) for w in head if w.startswith("/")]


async def test_the_checkouts_git_starts_in_one_exec_with_the_launcher(
    launcher: Path, spawned: list[tuple[str, ...]]
) -> None:
    out = await gitrepo.git(["--version"], dies_with_hal=True)
    assert out.startswith("git version")
    assert len(spawned) == 1
    # Was setpriv, then sh (their death signal and parent check): three execs for one git.
    assert spawned[0][:4] == (str(launcher), "--dies-with", str(os.getpid()), "--")
    assert _before_git(spawned[0]) == ["hal-launch"]


async def test_a_launcher_without_the_option_keeps_setpriv_and_sh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawned: list[tuple[str, ...]]
) -> None:
    if shutil.which("setpriv", path="/usr/local/bin:/usr/bin:/bin") is None:
        pytest.skip("no setpriv")
    older = tmp_path / "hal-launch"
    older.write_bytes(b"hal-launch abi: data\n")  # never run: only its ABI is read
    older.chmod(0o755)
    monkeypatch.setattr(hostexec, "launch_helper", lambda: str(older))
    out = await gitrepo.git(["--version"], dies_with_hal=True)
    assert out.startswith("git version")
    assert _before_git(spawned[0]) == ["setpriv", "sh"]


def test_a_hal_that_died_first_has_nothing_run(launcher: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    # A pid not its parent stands for a hal gone before the death signal was set (the
    # launcher re-parented): the program is not run.
    argv = [str(launcher), "--dies-with", str(os.getppid()), "--", "touch", str(ran)]
    assert subprocess.run(argv, timeout=30).returncode == 137
    assert not ran.exists()
    argv[2] = str(os.getpid())
    assert subprocess.run(argv, timeout=30).returncode == 0
    assert ran.exists()


@pytest.mark.parametrize("parent", ["", "0", "x", "-5", "12a"])
def test_a_bad_parent_is_refused(launcher: Path, tmp_path: Path, parent: str) -> None:
    ran = tmp_path / "ran"
    done = subprocess.run(
        [str(launcher), "--dies-with", parent, "--", "touch", str(ran)],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 125
    assert b"usage: hal-launch --dies-with" in done.stderr
    assert not ran.exists()


def test_a_parent_past_a_pids_range_is_refused(launcher: Path, tmp_path: Path) -> None:
    # strtol's long was cut to a pid_t: this process's pid plus 2^32 named this process, and
    # the program ran with a death signal tied to whatever pid the cut left.
    ran = tmp_path / "ran"
    parent = str(os.getpid() + (1 << 32))
    done = subprocess.run(
        [str(launcher), "--dies-with", parent, "--", "touch", str(ran)],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 125, done
    assert b"usage: hal-launch --dies-with" in done.stderr
    assert not ran.exists()


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _until(done: Callable[[], bool], limit: float = 30) -> bool:
    """Whether ``done`` came true within ``limit`` seconds (a bound on a wait for an
    event, not a measure of its speed)."""
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _through_itself(launcher: Path) -> list[str]:
    """The launcher's own sandbox form, as a supervisor runs a command under ``--dies-with``
    (no sandbox: a name, no filter, no limit, no cgroup)."""
    return [str(launcher), "sbx", "", "", "--"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_launcher_as_its_own_program_is_not_executed_again(
    launcher: Path, tmp_path: Path
) -> None:
    # A supervisor's command is `hal-launch --dies-with PID -- hal-launch ... -- bwrap ...`:
    # the second exec of the same file was one of a run's four hal-launch execs.
    trace = tmp_path / "execs"
    command = [*_through_itself(launcher), "sh", "-c", 'echo "$HAL_SANDBOX"']
    parent = (
        "import os, subprocess, sys\n"
        f"argv = [{str(launcher)!r}, '--dies-with', str(os.getpid()), '--', *{command!r}]\n"
        "sys.exit(subprocess.run(argv).returncode)\n"
    )
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), sys.executable, "-c",
         parent],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done
    assert done.stdout == "sbx\n"  # the sandbox form ran: HAL_SANDBOX set
    execs = [line for line in trace.read_text().splitlines() if "execve(" in line]
    assert sum(f'execve("{launcher}"' in line for line in execs) == 1
    assert any('execve("/usr/bin/sh"' in line or '/sh", ["sh"' in line for line in execs)


@pytest.mark.parametrize("through_itself", [False, True])
def test_the_program_is_killed_when_its_hal_dies(launcher: Path, through_itself: bool) -> None:
    # A stand-in hal spawns `sleep` through the launcher naming itself, says its pid and
    # waits; killed by SIGKILL, its sleep must end with it (the death signal, not a cleanup),
    # also when the launcher goes on as its own program rather than executing it.
    program = [*(_through_itself(launcher) if through_itself else []), "sleep", "600"]
    hal = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys\n"
         f"p = subprocess.Popen([{str(launcher)!r}, '--dies-with', str(os.getpid()), '--',"
         f" *{program!r}])\n"
         "print(p.pid, flush=True)\n"
         "p.wait()\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert hal.stdout is not None
    child = int(hal.stdout.readline())
    try:
        assert _until(lambda: _comm(child) == "sleep")  # the launcher has exec'd it
        hal.kill()
        hal.wait()
        assert _until(lambda: _state(child) in (None, "Z", "X"))
    finally:
        hal.stdout.close()
        if hal.poll() is None:
            hal.kill()
            hal.wait()
        if _state(child) not in (None, "Z", "X"):
            os.kill(child, signal.SIGKILL)
