"""``kill_marked``'s scan of every host process runs off the event loop (a daemon's
other tasks and requests waited behind it at every pool reset); it and the keepers' sweep
read each environment the same way (:func:`hostexec.environ_values`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hal9999.providers.bwrap import keeper
from hal9999.providers.host import exec as hostexec


async def test_the_scan_runs_in_a_thread_and_still_kills_the_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.get_ident()
    scanned_in: list[int] = []
    real = hostexec._pids_marked

    def scan(var: str, value: str) -> set[int]:
        scanned_in.append(threading.get_ident())
        return real(var, value)

    monkeypatch.setattr(hostexec, "_pids_marked", scan)
    marker = "0123456789ab"
    env = {**os.environ, hostexec.MARKER_VAR: marker}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", env=env
    )
    try:
        await hostexec.kill_marked(marker)
        assert await asyncio.wait_for(proc.wait(), 10) == -9
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert scanned_in and loop_thread not in scanned_in


# Execs sleep with exactly the environment given as arguments (duplicates kept, as a
# dict-based exec cannot): what a process may make its own environment look like.
EXEC_RAW = """
import ctypes, sys
entries = [a.encode() for a in sys.argv[1:]] + [None]
argv = (ctypes.c_char_p * 3)(b"/bin/sleep", b"60", None)
ctypes.CDLL(None).execve(b"/bin/sleep", argv, (ctypes.c_char_p * len(entries))(*entries))
"""


@contextlib.asynccontextmanager
async def _with_environ(*entries: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", EXEC_RAW, *entries)
    # Until the exec has set the environment up, not only its executable: in between,
    # /proc/PID/exe already names sleep while /proc/PID/environ still reads empty (a sweep
    # there found nothing to kill under CI's load).
    whole = b"".join(entry.encode() + b"\0" for entry in entries)
    try:
        for _ in range(3000):  # seconds on a loaded host
            if Path(f"/proc/{proc.pid}/environ").read_bytes() == whole:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the environment's exec did not happen in 30 s")
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def test_a_scan_sees_every_whole_entry_of_its_variable() -> None:
    var = f"HAL_TEST_{secrets.token_hex(4).upper()}"
    entries = (f"{var}=first", f"X{var}=not-it", "OTHER=1", f"{var}=second", f"{var}X=no")
    async with _with_environ(*entries) as proc:
        found = [v for pid, v in hostexec.environ_values(var) if pid == proc.pid]
        assert found == [b"first", b"second"]
        # A marker kill finds a process whatever entry carries the marker, only whole ones.
        assert hostexec._pids_marked(var, "second") == {proc.pid}
        assert hostexec._pids_marked(var, "secon") == set()
        assert hostexec._pids_marked(var, "not-it") == set()


async def test_the_sweep_kills_a_keeper_whose_directory_is_gone_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper, "_swept", [0.0])  # this test's sweep leaves the next alone
    # "gone" exists on disk and only this process's sweep is told otherwise: a sweep of
    # another process (the other test worker's pools) must not kill the orphan first.
    gone = tmp_path / "gone"
    gone.mkdir()
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda path: path != str(gone) and real_isdir(path))
    ours = (f"{keeper.MARKER_VAR}={tmp_path}", "PATH=/usr/bin:/bin")
    theirs = (f"{keeper.MARKER_VAR}={gone}", f"{keeper.MARKER_VAR}={gone}")  # listed twice
    async with _with_environ(*ours) as live, _with_environ(*theirs) as orphan:
        assert keeper.sweep(now=float("inf")) >= 1
        assert await asyncio.wait_for(orphan.wait(), 5) == -9
        assert live.returncode is None


# An agent's process: marked, naming a path of its choice, and undumpable (its /proc/PID
# files are then root's), as a process of another uid.
AGENT = """
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
sys.stdout.write("ready\\n"); sys.stdout.flush()
time.sleep(60)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a process of another uid")
async def test_the_sweep_never_looks_up_a_path_an_agents_process_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper, "_swept", [0.0])
    named = f"{tmp_path}/named-by-the-agent"
    looked_up: list[str] = []
    real_isdir = os.path.isdir

    def isdir(path: str) -> bool:
        looked_up.append(os.fsdecode(path))
        return real_isdir(path)

    monkeypatch.setattr(os.path, "isdir", isdir)
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-c", AGENT, env={keeper.MARKER_VAR: named}, user=65534,
        stdout=asyncio.subprocess.PIPE, cwd="/",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ready\n"
        assert os.stat(f"/proc/{proc.pid}/environ").st_uid == 0, "undumpable: shown as root's"
        keeper.sweep(now=float("inf"))
        assert named not in looked_up
        assert proc.returncode is None
    finally:
        proc.kill()
        await proc.wait()


async def test_a_pid_found_marked_is_killed_only_if_it_still_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the scan and the kill a marked process may end and its pid go to another
    process: the kill checks the marker again on the process it signals."""
    marker = secrets.token_hex(6)
    unmarked = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    scans = iter([{unmarked.pid}])  # what a scan made before the pid was reused would give
    monkeypatch.setattr(hostexec, "_pids_marked", lambda var, value: next(scans, set()))
    try:
        await hostexec.kill_marked(marker)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(unmarked.wait()), 0.3)
        assert unmarked.returncode is None
    finally:
        unmarked.kill()
        await unmarked.wait()
