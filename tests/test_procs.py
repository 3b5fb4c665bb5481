"""``procs.run_captured``: a host command run to its end on the event loop, its output
captured, without asyncio's subprocess transports, and its whole group killed and
reaped when the caller is cancelled."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from hal9999 import procs


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["pidfd", "asyncio"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways: the pidfd's, and asyncio's where pidfds do not work."""
    if request.param == "asyncio":
        monkeypatch.setattr(procs, "_pidfds", lambda: False)
    return str(request.param)


async def test_output_errors_and_status_are_captured(way: str) -> None:
    script = "printf out; printf err >&2; exit 3"
    assert await procs.run_captured(["sh", "-c", script]) == (3, b"out", b"err")
    assert await procs.run_captured(["sh", "-c", "kill -TERM $$"]) == (-15, b"", b"")


async def test_stdin_is_written_whole_ended_or_passed(way: str, tmp_path: Path) -> None:
    big = os.urandom(300_000)  # beyond a pipe's 64 KiB: written as cat reads it
    assert await procs.run_captured(["cat"], stdin=big) == (0, big, b"")
    assert await procs.run_captured(["cat"], stdin=b"") == (0, b"", b"")  # its end at once
    assert await procs.run_captured(["cat"]) == (0, b"", b"")  # /dev/null
    (tmp_path / "in").write_bytes(b"from a file")
    with (tmp_path / "in").open("rb") as f:
        assert await procs.run_captured(["cat"], stdin=f) == (0, b"from a file", b"")
    # A command that ends without reading its input is no error.
    assert await procs.run_captured(["true"], stdin=big) == (0, b"", b"")


async def test_cwd_and_env_are_its_own(way: str, tmp_path: Path) -> None:
    got = await procs.run_captured(
        ["/bin/sh", "-c", 'pwd; echo "$ONLY"'], cwd=tmp_path, env={"ONLY": "this"}
    )
    assert got == (0, f"{tmp_path}\nthis\n".encode(), b"")
    status, out, _ = await procs.run_captured(["/bin/sh", "-c", "ps -o sid= -p $$; echo $$"])
    sid, pid = out.split()
    assert status == 0 and sid == pid  # a session (and process group) of its own


async def test_what_cannot_start_raises_oserror_and_leaks_nothing(way: str, tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        await procs.run_captured(["true"], cwd=tmp_path / "gone")
    with pytest.raises(FileNotFoundError):
        await procs.run_captured(["no-such-program-here"])
    for _ in range(5):
        await procs.run_captured(["true"], stdin=b"x")
    assert open_fds() == before


async def test_cancelled_its_group_is_killed_and_it_is_reaped(way: str, tmp_path: Path) -> None:
    before, children = open_fds(), set(_children_left())  # an earlier test's may be there
    pid_file = tmp_path / "pid"
    # The shell's background sleep holds the pipes open: only killing the group ends it.
    script = f"sleep 60 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"
    running = asyncio.ensure_future(procs.run_captured(["sh", "-c", script]))
    sleeper = await _cancelled_once_started(running, pid_file)
    assert not _alive(sleeper)
    assert open_fds() == before
    assert set(_children_left()) <= children


async def test_given_term_s_its_group_is_sent_sigterm_first_then_killed(
    way: str, tmp_path: Path
) -> None:
    # A git removes its lock files on SIGTERM (not on SIGKILL): the shell here says it got
    # one; its child ignores it and is killed after term_s.
    before, children = open_fds(), set(_children_left())
    pid_file, termed = tmp_path / "pid", tmp_path / "termed"
    script = (
        f"trap 'echo yes > {termed}; exit 0' TERM; (trap '' TERM; exec sleep 60) & "
        f"echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"
    )
    running = asyncio.ensure_future(procs.run_captured(["sh", "-c", script], term_s=0.5))
    stubborn = await _cancelled_once_started(running, pid_file)
    assert termed.read_text() == "yes\n"
    assert not _alive(stubborn)
    assert open_fds() == before
    assert set(_children_left()) <= children


async def _cancelled_once_started(running: asyncio.Future[Any], pid_file: Path) -> int:
    """``running`` cancelled once its script wrote ``pid_file``; that pid, once it is gone
    (or 10 s have passed)."""
    while not pid_file.exists():
        await asyncio.sleep(0.01)
    pid = int(pid_file.read_text())
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return pid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children_left() -> list[int]:
    """This process's children not reaped (zombies included)."""
    me = str(os.getpid())
    left = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                left.append(int(name))
    return left


async def test_it_takes_no_asyncio_subprocess_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    # Asyncio's transports, protocols and child watcher cost the
    # daemon twice the CPU a process that the pidfd's way does.
    calls: list[Any] = []
    original = asyncio.base_events.BaseEventLoop.subprocess_exec

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "subprocess_exec", counted)
    assert await procs.run_captured(["echo", "hi"]) == (0, b"hi\n", b"")
    assert calls == []


async def test_its_pipes_are_unbuffered(monkeypatch: pytest.MonkeyPatch) -> None:
    # A buffered pipe object costs an ioctl and an lseek each (three a
    # command) for descriptors only their numbers are used of.
    import io
    import subprocess

    made: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    class Seen(real):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(subprocess, "Popen", Seen)
    assert await procs.run_captured(["cat"], stdin=b"x") == (0, b"x", b"")
    (child,) = made
    assert all(type(p) is io.FileIO for p in (child.stdin, child.stdout, child.stderr))


async def test_a_discarded_stdout_is_not_waited_for(way: str) -> None:
    # The keeper's launcher leaves a process behind holding its stdout:
    # on a pipe, the run would last as long as that process.
    script = "sleep 30 2>/dev/null & echo $! >&2; echo out"
    code, out, err = await asyncio.wait_for(
        procs.run_captured(["sh", "-c", script], discard_stdout=True), 20
    )
    os.kill(int(err), 9)
    assert (code, out) == (0, b"")
