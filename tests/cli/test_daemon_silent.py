"""A daemon that does not answer (stopped with SIGSTOP, or stuck) never holds a client for
ever: every call has a deadline (``HAL_DAEMON_TIMEOUT_S``, past a long poll's own wait) and
ends in one line naming the daemon, what was asked and how to go on."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.conftest import Hal, one_error_line

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]
SLEEPER = "sh -c 'sleep 120' {{prompt_file}}"


@pytest.fixture
def stopped_daemon(hal: Hal, hal_env: dict[str, str]) -> Iterator[tuple[int, str]]:
    """A running ``hal serve`` with a task in flight, then stopped by SIGSTOP; its pid and the
    task's id. Continued and stopped at the end."""
    assert hal("serve", "--detach").returncode == 0
    task_id = hal("run", "--detach", "--agent", SLEEPER, "x").stdout.strip()
    home = Path(hal_env["HAL_HOME"])
    pid = int(json.loads((home / "run" / "serve.json").read_text())["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid, task_id
    finally:
        os.kill(pid, signal.SIGCONT)
        hal("task", "cancel", task_id)
        assert hal("serve", "--stop").returncode == 0


@pytest.mark.parametrize(
    ("argv", "asked"),
    [
        (("task", "stop", "{id}"), "POST /v1/tasks/{id}/stop"),
        (("task", "cancel", "{id}"), "POST /v1/tasks/{id}/cancel"),
        (("run", "--agent", "true {{prompt_file}}", "y"), "POST /v1/tasks"),
        (("task", "resume", "{id}"), "GET /v1/tasks/{id}"),
    ],
    ids=["stop", "cancel", "run", "resume"],
)
def test_a_client_of_a_silent_daemon_gives_up_in_one_line(
    hal: Hal, stopped_daemon: tuple[int, str], argv: tuple[str, ...], asked: str
) -> None:
    pid, task_id = stopped_daemon
    started = time.monotonic()
    out = hal(*(a.replace("{id}", task_id) for a in argv), env={"HAL_DAEMON_TIMEOUT_S": "2"})
    took = time.monotonic() - started
    line = one_error_line(out)
    assert out.returncode == 1, (out.returncode, line)
    said = f"hal serve (pid {pid}) did not answer {asked.replace('{id}', task_id)} within 2 s"
    assert said in line and f"kill -CONT {pid}" in line, line
    assert took < 30, took
