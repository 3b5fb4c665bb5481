"""``kill_marked``'s scan of every host process runs off the event loop (issue 16: a daemon's
other tasks and requests waited behind it at every pool reset)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from hal9999.providers import hostexec


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
