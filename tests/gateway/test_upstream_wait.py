"""A model call the upstream refuses with 429 is held and retried by the gateway: the task
says so (an ``upstream_wait`` event with the wait and the reason), the foreground run prints
it on stderr, and ``hal task show`` names the wait while it lasts, where a rate-limited
key looked like a hung agent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import KEY_VAR, HalCli, git
from tests.gateway.upstream import StormUpstream

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]

CALLER = Path(__file__).with_name("caller_agent.py")
REFUSED = 3
"""The upstream's first answers: 429 with a ``retry-after`` of WAIT_S each."""
WAIT_S = 4


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream(fail_first=REFUSED, retry_after=str(WAIT_S)) as server:
        yield server


@pytest.mark.parametrize("path", ["in-process", "served"])
def test_a_call_held_by_the_upstreams_429_is_told(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream, path: str
) -> None:
    shutil.copy(CALLER, bug_repo / "caller.py")
    (bug_repo / "caller.py").chmod(0o755)
    git(bug_repo, "add", "caller.py")
    git(bug_repo, "commit", "-qm", "caller agent")
    hal_cli.config_file.parent.mkdir(parents=True, exist_ok=True)
    hal_cli.config_file.write_text(
        "[agents.claude]\n"
        'command = "/workspace/caller.py"\n'
        f'base_url = "{upstream.url}"\n'
        f'api_key_env = "{KEY_VAR}"\n'
    )
    if path == "served":
        assert hal_cli("serve", "--detach").returncode == 0
    try:
        _told(hal_cli, bug_repo, path)
    finally:
        if path == "served":
            hal_cli("serve", "--stop")


def _told(hal_cli: HalCli, bug_repo: Path, path: str) -> None:
    argv = [sys.executable, "-m", "hal9999", "run", "--agent", "claude", "call"]
    run = subprocess.Popen(argv, cwd=bug_repo, env=hal_cli.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    shown, status = "", ""
    try:
        # While the gateway holds the first call (REFUSED waits of WAIT_S), the task says so.
        deadline = time.monotonic() + 120
        while "waiting" not in shown:
            assert run.poll() is None and time.monotonic() < deadline, shown
            tasks = json.loads(hal_cli("task", "list", "--json").stdout)
            if tasks:
                shown = hal_cli("task", "show", tasks[0]["id"]).stdout
                if path == "served" and "waiting" in shown:
                    status = hal_cli("status").stdout
            time.sleep(0.3)
    finally:
        out, err = run.communicate(timeout=180)
    assert run.returncode == 0, out[-2000:] + err[-2000:]
    waiting = next(line for line in shown.splitlines() if line.startswith("waiting"))
    assert "429 (rate limited)" in waiting and "the agent waits on it" in waiting, shown
    if path == "served":  # the daemon's view of its running tasks says it too
        assert "answered 429 (rate limited)" in status, status

    [task] = json.loads(hal_cli("task", "list", "--json").stdout)
    lines = hal_cli("task", "events", task["id"], "--json").stdout.splitlines()
    waits = [event for line in lines if (event := json.loads(line))["type"] == "upstream_wait"]
    assert [(w["status"], w["reason"], w["retry"], w["retries"]) for w in waits] == [
        (429, "rate limited", n, 6) for n in range(1, REFUSED + 1)
    ]
    assert all(w["wait_s"] >= WAIT_S - 1 for w in waits), waits
    told = [line for line in err.splitlines() if "answered 429 (rate limited)" in line]
    assert len(told) == REFUSED, err[-3000:]
    assert all(line.startswith("hal: waiting: ") for line in told), told
    ended = hal_cli("task", "show", task["id"]).stdout
    assert "waiting" not in ended, "an ended task waits on nothing"
