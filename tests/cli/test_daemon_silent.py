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
from tests.support.daemon import poll
from tests.support.hal import Hal, one_error_line, tasks_json

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
        # Its run may only now be starting: the cancel waits for its bring-back.
        hal("task", "cancel", task_id, timeout=240)
        assert hal("serve", "--stop").returncode == 0


@pytest.mark.parametrize(
    ("argv", "asked"),
    [
        (("run", "--agent", "true {{prompt_file}}", "y"), "POST /v1/tasks"),
        (("task", "resume", "{id}"), "GET /v1/tasks/{id}"),
        (("task", "show", "{id}", "--json"), "GET /v1/tasks/{id}"),
    ],
    ids=["run", "resume", "show"],
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


def test_a_request_whose_client_gave_up_is_not_carried_out(
    hal: Hal, hal_env: dict[str, str], stopped_daemon: tuple[int, str]
) -> None:
    """The run a client gave up on stays in the socket while the daemon is stopped; once it
    continues, the daemon drops it (the client said it failed) and says so in its log."""
    pid, task_id = stopped_daemon
    out = hal("run", "--agent", "true {{prompt_file}}", "y", env={"HAL_DAEMON_TIMEOUT_S": "2"})
    assert out.returncode == 1, one_error_line(out)
    os.kill(pid, signal.SIGCONT)
    log = Path(hal_env["HAL_HOME"]) / "run" / "serve.log"
    said = "dropped POST /v1/tasks: its client gave up"
    poll("the daemon's line on the dropped run", lambda: said in log.read_text(), timeout=60)
    assert [t["id"] for t in tasks_json(hal)] == [task_id]


def test_each_request_waits_for_what_it_does_and_no_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop waits for the run's bring-back (up to the process managers' wait), a command
    in a sandbox for its own length; anything else answers within the deadline itself."""
    from hal9999.process.base import STOP_WAIT_S
    from hal9999.server import client
    from hal9999.server.runtime import DaemonInfo

    monkeypatch.setenv("HAL_DAEMON_TIMEOUT_S", "2")
    daemon = client.DaemonClient(DaemonInfo(1, "s", 1, 0.0), "t")
    assert client.STOPPING_S >= STOP_WAIT_S  # kept with the managers' own wait
    for method, path in (("POST", "/v1/tasks/x/stop"), ("POST", "/v1/tasks/x/cancel"),
                         ("DELETE", "/v1/tasks/x")):  # fmt: skip
        assert daemon.deadline(method, path, None) == 2 + client.STOPPING_S
    assert daemon.deadline("POST", "/v1/sandboxes/bwrap/x/exec", None) == 2 + client.WORKING_S
    assert daemon.deadline("GET", "/v1/tasks/x/events", {"wait": 10.0}) == 12
    for method, path in (("POST", "/v1/tasks"), ("GET", "/v1/tasks/x"),
                         ("POST", "/v1/tasks/x/resume"), ("GET", "/v1/pool")):  # fmt: skip
        assert daemon.deadline(method, path, None) == 2


@pytest.mark.parametrize("bad", ["abc", "0", "-3", "inf", "nan"])
def test_a_bad_daemon_timeout_is_one_line(hal: Hal, bad: str) -> None:
    assert hal("serve", "--detach").returncode == 0
    try:
        out = hal("task", "stop", "nope", env={"HAL_DAEMON_TIMEOUT_S": bad})
        line = one_error_line(out)
        assert out.returncode == 2 and "HAL_DAEMON_TIMEOUT_S: expected a number" in line, line
    finally:
        assert hal("serve", "--stop").returncode == 0
