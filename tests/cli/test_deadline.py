"""``--timeout`` bounds the whole task (a clone that hangs included), and SIGTERM to a
foreground ``hal run`` ends it as cleanly as Ctrl-C: no sandbox, no process, an honest message."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.vendor_api import SHUTDOWN_POLL_S
from tests.support.cli import assert_no_leftovers, wait_for_status
from tests.support.hal import Hal, start_hal, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


class GitServer:
    """An HTTP server that accepts and never answers until ``serve(dir)`` is called; from
    then on it serves that directory (a bare repository works over git's dumb HTTP)."""

    def __init__(self) -> None:
        self.served: Path | None = None
        self.release = threading.Event()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(outer.served or "/nonexistent"), **kwargs)

            def do_GET(self) -> None:
                if outer.served is None:
                    outer.release.wait(120)  # silent: the client waits forever
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(SHUTDOWN_POLL_S,), daemon=True
        )
        self.thread.start()

    def serve(self, directory: Path) -> None:
        """Answer from now on, with the files of ``directory``."""
        self.served = directory
        self.release.set()

    def close(self) -> None:
        """Stop serving and let every blocked request go."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def git_server() -> Iterator[GitServer]:
    """A git HTTP server that starts out silent."""
    server = GitServer()
    yield server
    server.close()


@pytest.fixture
def silent_server(git_server: GitServer) -> int:
    """A port that accepts connections and never answers (the client waits forever)."""
    return git_server.port


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
    # The server never answers: hal returning within its (generous) 90 s bounded the clone.
    out = hal(
        "run", "--timeout", "3", "--repo", url, "--agent", "true {{prompt_file}}", "x", "--json",
        timeout=90,
    )  # fmt: skip
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
    proc = start_hal(hal_env, demo_repo, "run", "--repo", url, "--agent",
                     "true {{prompt_file}}", "x")  # fmt: skip
    wait_for_status(hal, "preparing")
    deadline = time.monotonic() + 20
    while not processes_naming(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(url), "git never started cloning"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "cancelled" in err and "Traceback" not in err
    [task] = tasks_json(hal)
    assert task["status"] == "cancelled" and task["sandbox_id"] is None
    assert "SIGTERM" in (task["error_message"] or ""), task
    assert_clean(hal, task, url)


def test_resume_after_a_clone_cut_short_clones_again(
    hal: Hal, demo_repo: Path, tmp_path: Path, git_server: GitServer
) -> None:
    url = f"http://127.0.0.1:{git_server.port}/x.git"
    out = hal(
        "run", "--timeout", "5", "--repo", url, "--agent", "sh -c 'echo hi > hi.txt'", "x",
        "--json", timeout=60,
    )  # fmt: skip
    assert out.returncode == 124, out.stderr
    task = json.loads(out.stdout)
    # The server comes back: the half-made clone the timeout cut short must not be in the way.
    served = tmp_path / "served"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(demo_repo), str(served / "x.git")], check=True
    )
    subprocess.run(["git", "-C", str(served / "x.git"), "update-server-info"], check=True)
    git_server.serve(served)
    resumed = hal("task", "resume", task["id"], "--json", timeout=60)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["status"] == "succeeded", final
    assert "hi.txt" in Path(final["session_dir"], "result.patch").read_text()


def test_sigterm_to_a_detached_runner_ends_cleanly(hal: Hal, silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}/x.git"
    out = hal("run", "--detach", "--repo", url, "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 0, out.stderr
    task = wait_for_status(hal, "preparing")
    deadline = time.monotonic() + 20
    while not processes_naming(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    runner = task["runner_pid"]
    assert isinstance(runner, int)
    os.kill(runner, signal.SIGTERM)
    # Its sandbox is destroyed after `cancelled` is written: read once the run is over.
    final = wait_for_status(hal, "cancelled", ended=True)
    assert "SIGTERM" in str(final["error_message"]) and final["sandbox_id"] is None
    assert_clean(hal, final, url)
