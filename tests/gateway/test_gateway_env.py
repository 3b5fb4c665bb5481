"""A detached gateway keeps none of its starter's secrets in its environment.

The gateway outlives the run that started it and serves every later one; it used to inherit
that run's whole environment, so a ``--secret`` value, a forwarded ``*_API_KEY`` and any token
of the user's shell sat in its ``/proc/PID/environ`` for as long as it lived."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from hal9999.gateway.channel import GatewayPaths, ensure_running, gateway_pid

pytestmark = pytest.mark.timeout(120)

PLANTED = {
    "LEAK_SECRET": "gw-env-secret-5d1c8e02b7",
    "MY_API_KEY": "gw-env-apikey-a93f60e4d2",
    "HAL_DO_TOKEN": "gw-env-dotoken-0c7b21f98e",
}


def test_a_started_gateway_holds_none_of_its_starters_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HAL_GATEWAY_IDLE_S", "30")
    paths = GatewayPaths(tmp_path)
    asyncio.run(ensure_running(paths))
    pid = asyncio.run(gateway_pid(paths))
    assert pid is not None, paths.log.read_text()
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        os.kill(pid, signal.SIGTERM)
    for value in PLANTED.values():
        assert value.encode() not in environ
    # What it needs stays: its idle time and the interpreter's search path.
    assert b"HAL_GATEWAY_IDLE_S=30\0" in environ
    assert b"PATH=" in environ
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
