"""procs: liveness by pid and start time, and kill-until-gone, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from hal9999 import procs


def _spawn(script: str, *, start_new_session: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], start_new_session=start_new_session)


def _until(check: Callable[[], object], limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_liveness_names_one_process_not_a_pid(tmp_path: Path) -> None:
    child = _spawn("exec sleep 60")
    try:
        since = procs.started(child.pid)
        assert since is not None
        assert procs.alive(child.pid) and procs.alive(child.pid, since)
        # The same pid with another start time is another process: a reused pid.
        assert not procs.alive(child.pid, since + 1)
        mine = procs.started(os.getpid())
        assert mine is not None and not procs.alive(os.getpid(), since if since != mine else 1)
    finally:
        child.kill()
    # Ended but not reaped yet (a zombie): not alive.
    _until(lambda: procs.started(child.pid) is None)
    assert not procs.alive(child.pid) and not procs.alive(child.pid, since)
    child.wait()
    assert not procs.alive(None) and not procs.alive(0)


async def test_kill_until_gone_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = _spawn(f"trap '' TERM; touch {ready}; exec sleep 60")
    _until(ready.exists)
    since = procs.started(child.pid)
    assert await procs.kill_until_gone(child.pid, since=since, term_s=0.3)
    assert child.wait(timeout=30) == -signal.SIGKILL


async def test_kill_until_gone_ends_a_whole_group_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pid_file}.x; mv {pid_file}.x {pid_file}; wait"
    leader = _spawn(script, start_new_session=True)
    _until(pid_file.exists)
    sleeper = int(pid_file.read_text())
    assert await procs.kill_until_gone(leader.pid, group=True, term_s=30)
    assert leader.wait(timeout=30) == -signal.SIGTERM
    _until(lambda: not procs.alive(sleeper))
    assert not procs.alive(sleeper)


async def test_kill_until_gone_never_signals_another_process_at_the_pid() -> None:
    child = _spawn("exec sleep 60")
    try:
        since = procs.started(child.pid)
        assert since is not None
        # Told of a process that started at another time: that one is gone, this one stays.
        assert await procs.kill_until_gone(child.pid, since=since + 1, gone_s=0.5)
        assert await procs.kill_until_gone(child.pid, still=lambda: False, gone_s=0.5)
        assert child.poll() is None and procs.alive(child.pid, since)
    finally:
        child.kill()
        child.wait()


async def test_a_signal_waits_for_its_proof_and_the_wait_for_the_end_of_that_process() -> None:
    # The proof (a command line naming the process) may not hold yet, as in the middle of
    # an execve: the signal is tried again until it does; the end awaited is the process's.
    child = _spawn("exec sleep 60")
    since = procs.started(child.pid)
    asked: list[int] = []

    def proven() -> bool:
        asked.append(1)
        return len(asked) > 3

    assert await procs.kill_until_gone(child.pid, since=since, still=proven, gone_s=30)
    assert child.wait(timeout=30) == -signal.SIGKILL and len(asked) > 3
