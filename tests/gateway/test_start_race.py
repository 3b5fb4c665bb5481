"""A gateway start that loses the race for the lock imports nothing heavy.

Concurrent runs each start ``python -m hal9999.gateway --detach``; all but one find the lock
held. A loser used to import the whole server (Starlette, httpx, the store: ~380 modules,
~0.4 s of CPU) before finding out; it now takes the lock first. Counted in a fresh
interpreter, not timed. The winner still serves, and a lock left by a killed holder is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.gateway.channel import GatewayPaths, gateway_pid

pytestmark = pytest.mark.timeout(120)

IMPORTED = """
import runpy, sys
before = set(sys.modules)
sys.argv = ["hal9999.gateway", *sys.argv[1:]]
try:
    runpy.run_module("hal9999.gateway", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    sys.stderr.write("\\nexit " + str(exc.code))
loaded = sorted(set(sys.modules) - before)
import json  # only now: the start itself must not need it
sys.stderr.write("\\n" + json.dumps(loaded))
"""
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""
HEAVY = ("asyncio", "logging", "pathlib", "json", "hal9999.gateway.server",
         "hal9999.gateway.channel", "hal9999.store", "starlette", "httpx", "uvicorn",
         "pydantic")  # fmt: skip


def gateway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def lock_held(paths: GatewayPaths) -> Iterator[None]:
    """Another process holds the gateway's lock, as a running gateway does, until it is
    killed (SIGKILL: its lock file stays behind)."""
    paths.root.mkdir(parents=True, mode=0o700)
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(paths.lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            yield
        finally:
            holder.send_signal(signal.SIGKILL)


def test_a_start_that_finds_the_lock_held_imports_nothing_heavy(tmp_path: Path) -> None:
    paths = GatewayPaths(tmp_path)
    with lock_held(paths):
        done = subprocess.run(
            [sys.executable, "-c", IMPORTED, "--home", str(tmp_path), "--detach"],
            env=gateway_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    *said, status, modules = done.stderr.strip().splitlines()
    assert status == "exit 0", said  # "busy": the starter goes on to ping the holder
    loaded = set(json.loads(modules))
    assert {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY} == set()
    # ~20 beyond the interpreter's own (argparse's gettext, locale, shutil); it was ~300.
    assert len(loaded) < 40, sorted(loaded)
    assert not paths.control.exists() and not paths.channel.exists()  # the holder's, untouched


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return status == "Z"


@pytest.mark.slow
def test_the_lock_of_a_killed_holder_is_taken_and_the_winner_serves(tmp_path: Path) -> None:
    paths = GatewayPaths(tmp_path)
    with lock_held(paths):
        pass  # a gateway killed: its lock file stays behind
    assert paths.lock.exists()
    with paths.log.open("ab") as log:
        subprocess.run(
            [sys.executable, "-m", "hal9999.gateway", "--home", str(tmp_path), "--detach"],
            env=gateway_env(HAL_GATEWAY_IDLE_S="0.5"), stdin=subprocess.DEVNULL, stdout=log,
            stderr=log, timeout=60, check=True,
        )  # fmt: skip
    pid = asyncio.run(gateway_pid(paths))  # it answers once --detach has returned
    assert pid is not None, paths.log.read_text()
    assert (paths.channel / "forwarder.py").exists() and paths.socket.exists()
    deadline = time.monotonic() + 60
    while not gone(pid) and time.monotonic() < deadline:  # idle: it exits by itself
        time.sleep(0.1)
    assert gone(pid), paths.log.read_text()
    assert "Traceback" not in paths.log.read_text()
