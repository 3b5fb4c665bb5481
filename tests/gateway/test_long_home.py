"""The gateway of a HAL_HOME deep enough that its sockets' paths pass ``sun_path``'s 107
bytes (a test's home under xdist's ``popen-gwN``), and a gateway that fails to start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hal9999.gateway.channel import GatewayPaths, gateway_pid

pytestmark = [pytest.mark.timeout(120)]


def detach(home: Path, log: Path) -> int:
    """``python -m hal9999.gateway --detach`` (its output in ``log``, as hal starts it): 0
    once a gateway listens, 1 if none does."""
    argv = [sys.executable, "-m", "hal9999.gateway", "--home", str(home), "--detach"]
    with log.open("wb") as out:
        return subprocess.run(argv, stdout=out, stderr=out, timeout=90, check=False).returncode


async def test_a_deep_home_has_a_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The two-worker suite (stop 41): every gateway of a home 108 bytes deep exited before
    # listening on egress.sock, and each run failed after 60 s with "did not start".
    monkeypatch.setenv("HAL_GATEWAY_IDLE_S", "60")
    home = tmp_path / ("h" * (82 - len(str(tmp_path)) - 1))
    paths = GatewayPaths(home)
    assert len(str(paths.egress_socket)) > 107 >= len(str(paths.control))
    log = tmp_path / "gateway.out"
    assert await asyncio.to_thread(detach, home, log) == 0, log.read_text()
    assert all(p.is_socket() for p in (paths.socket, paths.egress_socket, paths.control))
    pid = await gateway_pid(paths)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def test_a_gateway_that_cannot_start_says_why(tmp_path: Path) -> None:
    # The detached gateway ends with os._exit, which prints nothing of an exception: its
    # reason went nowhere, and its log (which is its stderr) stayed empty.
    home = tmp_path / "home"
    home.mkdir()
    (home / "gateway").write_text("not a directory")
    log = tmp_path / "gateway.out"
    assert detach(home, log) == 1
    said = log.read_text()
    assert "Traceback" in said and "FileExistsError" in said, said
