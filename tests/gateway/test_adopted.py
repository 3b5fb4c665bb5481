"""A live agent outlives its gateway, and its runner: the run registers its grant again (the
same token, kept in the session's host-only run dir, the key read from the host again), the
agent's next call is served and its usage events go on without a gap or a repeat."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import KEY_VAR, HalCli, git
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import gateway_pid

from hal9999.gateway.channel import GatewayPaths

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]

AGENT = Path(__file__).with_name("waiting_agent.py")


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream() as server:
        yield server


def use_waiting_agent(hal: HalCli, repo: Path, upstream: StormUpstream) -> None:
    shutil.copy(AGENT, repo / "caller.py")
    git(repo, "add", "caller.py")
    git(repo, "commit", "-qm", "waiting agent")
    hal.config_file.parent.mkdir(parents=True, exist_ok=True)
    hal.config_file.write_text(
        "[agents.claude]\n"
        'command = "/workspace/caller.py"\n'
        f'base_url = "{upstream.url}"\n'
        f'api_key_env = "{KEY_VAR}"\n'
    )


def only_task(hal: HalCli) -> dict[str, Any]:
    [task] = json.loads(hal("task", "list", "--json").stdout)
    assert isinstance(task, dict)
    return task


def wait_for(what: str, check: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kill_gateway(home: Path) -> int:
    pid = asyncio.run(gateway_pid(GatewayPaths(home)))
    os.kill(pid, signal.SIGKILL)
    return pid


def gateway_usage(hal: HalCli, task_id: str) -> list[dict[str, Any]]:
    lines = hal("task", "events", task_id, "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    return [e for e in events if e["type"] == "usage" and e.get("source") == "gateway"]


def test_a_run_outlives_a_killed_gateway(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    use_waiting_agent(hal_cli, bug_repo, upstream)
    argv = [sys.executable, "-m", "hal9999", "run", "--agent", "claude", "--json", "wait"]
    run = subprocess.Popen(argv, cwd=bug_repo, env=hal_cli.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for("the first call", lambda: len(upstream.seen) == 1)
        # Killed once the first call is over and recorded: a gateway killed while the
        # upstream answers loses that call's row with it (the agent's call fails too).
        task_id = only_task(hal_cli)["id"]
        wait_for("the first call's usage", lambda: len(gateway_usage(hal_cli, task_id)) == 1)
        kill_gateway(hal_cli.home)
        Path(only_task(hal_cli)["session_dir"], "workspace", "go").touch()
        out, err = run.communicate(timeout=150)
    finally:
        if run.poll() is None:  # a failed wait: reap it, or it leaks into later tests
            run.kill()
            run.communicate()
    assert run.returncode == 0, out[-1500:] + err[-1500:]
    task = only_task(hal_cli)
    assert task["status"] == "succeeded"
    assert len(upstream.seen) == 2, "the call after the kill went through a new gateway"
    assert len(gateway_usage(hal_cli, task["id"])) == 2


def test_an_adopted_run_registers_its_token_again(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    use_waiting_agent(hal_cli, bug_repo, upstream)
    hal_cli.env["HAL_NO_DAEMON"] = "1"
    started = hal_cli("run", "--detach", "--agent", "claude", "wait")
    assert started.returncode == 0, started.stderr
    task_id = started.stdout.strip()
    try:
        wait_for("the first call", lambda: len(upstream.seen) == 1)
        wait_for("the first usage event", lambda: len(gateway_usage(hal_cli, task_id)) == 1)
        runner = only_task(hal_cli)["runner_pid"]
        os.kill(runner, signal.SIGKILL)  # the runner, then the gateway: nobody holds the grant
        kill_gateway(hal_cli.home)
        resumed = hal_cli("task", "resume", task_id, "--detach")
        assert resumed.returncode == 0, resumed.stderr
        Path(only_task(hal_cli)["session_dir"], "workspace", "go").touch()
        wait_for("the end", lambda: only_task(hal_cli)["status"] not in ("running", "interrupted"))
    finally:
        if only_task(hal_cli)["status"] in ("queued", "running", "interrupted"):
            hal_cli("task", "stop", task_id)  # a failed wait: its agent would outlive the test
    task = only_task(hal_cli)
    logs = hal_cli("task", "logs", task_id).stdout
    assert task["status"] == "succeeded", logs[-2000:]
    assert "CALL 2 200" in logs
    assert len(upstream.seen) == 2
    assert len(gateway_usage(hal_cli, task_id)) == 2, "no usage event lost or repeated"
