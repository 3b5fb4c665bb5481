"""``--timeout`` bounds the whole task (a clone that hangs included), and SIGTERM to a
foreground ``hal run`` ends it as cleanly as Ctrl-C: no sandbox, no process, an honest message."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cli.conftest import Hal, tasks_json
from tests.cli.test_failures import assert_no_leftovers, wait_for_status

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (the client waits forever)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


def processes_naming(needle: str) -> list[str]:
    """Command lines of live processes (not zombies) that contain ``needle``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle.encode() in cmd and state != "Z":
            found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def assert_clean(hal: Hal, task: dict[str, Any], url: str) -> None:
    """No sandbox (provider list empty), no hal or git process of the task."""
    assert_no_leftovers(task)
    deadline = time.monotonic() + 5
    while processes_naming(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(url) == [], "a git process of the clone survived"
    listed = hal("sandbox", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_timeout_bounds_a_clone_that_never_answers(hal: Hal, silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}/x.git"
    started = time.monotonic()
    out = hal(
        "run", "--timeout", "3", "--repo", url, "--agent", "true {{prompt_file}}", "x", "--json",
        timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert out.returncode == 124, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "timed_out" and task["error_code"] == "timed_out"
    message = task["error_message"]
    assert "timeout of 3s" in message and "never started" in message, message
    assert "may still be running" not in message
    assert_clean(hal, task, url)
    # Listing again does not turn it into an "interrupted" task whose agent "may run".
    [listed] = tasks_json(hal)
    assert listed["status"] == "timed_out"


def test_sigterm_during_clone_ends_cleanly(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, silent_server: int
) -> None:
    url = f"http://127.0.0.1:{silent_server}/x.git"
    argv = ["run", "--repo", url, "--agent", "true {{prompt_file}}", "x"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal9999", *argv],
        cwd=demo_repo,
        env=hal_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_status(hal, "preparing")
        deadline = time.monotonic() + 20
        while not processes_naming(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_naming(url), "git never started cloning"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 143, err
    assert "cancelled" in err and "Traceback" not in err
    [task] = tasks_json(hal)
    assert task["status"] == "cancelled" and task["sandbox_id"] is None
    assert "SIGTERM" in (task["error_message"] or ""), task
    assert_clean(hal, task, url)
