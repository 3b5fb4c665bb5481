"""The secret sweep: an agent that leaks every value it holds in every way it can,
run for real (bwrap, the LLM gateway), and every place the host keeps or shows searched for
each secret in each form hal promises to mask (docs/security.md, section 10, "The sweep")."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from tests.cli.sweep_helpers import (
    CAP,
    CRED,
    FORWARDED,
    REAL_KEY,
    SECRET,
    UNRELATED,
    configure,
    files_holding,
    found_in,
    host_processes,
    others_can_read,
    repo_text,
    run_watched,
)
from tests.support.hal import Hal, tasks_json

from hal9999.gateway.channel import GatewayPaths, gateway_pid

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]


def _stop_gateway(home: Path) -> None:
    pid = asyncio.run(gateway_pid(GatewayPaths(home)))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def test_a_leaking_agent_leaves_no_secret_anywhere_on_the_host(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    configure(hal_env, demo_repo, tmp_path)
    home = Path(hal_env["HAL_HOME"])
    home.mkdir(mode=0o755)  # the user's own, as they made it: hal leaves its mode alone
    home.chmod(0o755)
    try:
        done, in_argv, in_environ = run_watched(hal_env, demo_repo, {"LEAK_CAP": str(CAP)})
        environ = host_processes()
        gateway = asyncio.run(gateway_pid(GatewayPaths(home)))
        assert gateway is not None and gateway in environ, "the run went through the gateway"
        gateway_env = environ[gateway][2]
        refused, _, _ = run_watched(hal_env, demo_repo, {"LEAK_COMMIT": "1"})
    finally:
        _stop_gateway(home)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    first, second = sorted(tasks_json(hal), key=lambda task: task["created_at"])
    token = (Path(first["session_dir"]) / "run" / "gateway.json").read_text()
    placeholder = token.split('"token": "')[1].split('"')[0]
    secrets = [SECRET, FORWARDED, REAL_KEY, CRED, placeholder]

    # The agent really held each (its output shows them masked, never plain).
    assert done.stdout.count(b"[REDACTED]") > 40
    assert found_in(done.stdout + done.stderr, [*secrets, UNRELATED]) == []
    # No command line, and no process outside the run's own tree (the gateway, a VM, a
    # tmux server, a keeper), showed one; the gateway's environment holds none.
    assert in_argv == set() and in_environ == set()
    assert found_in(gateway_env, [*secrets, UNRELATED]) == []

    # Every file under HAL_HOME: the agent's own workspace and home aside (its checkout and
    # branches; the refused result kept for the user), only the run's gateway.json holds
    # its placeholder, and nothing another user could read holds anything.
    held = files_holding(home, secrets)
    for task in (first, second):
        prefix = str(Path(task["session_dir"]).relative_to(home)) + "/"
        for name in [n for n in held if n.startswith((prefix + "workspace/", prefix + "home/"))]:
            del held[name]
    assert held.pop(f"sessions/{first['id']}/run/gateway.json") == [placeholder]
    assert held.pop(f"sessions/{second['id']}/run/gateway.json", [placeholder]) != []
    kept = {f"sessions/{second['id']}/{name}" for name in ("result.patch", "result.bundle")}
    assert set(held) <= kept, held
    everything = files_holding(home, [*secrets, UNRELATED])
    assert [name for name in everything if others_can_read(home / name, home)] == []

    # The events and logs hal shows, and the user's repository: every object, ref and reflog.
    for args in (("task", "events", "--json"), ("task", "logs"), ("task", "show", "--json")):
        for task in (first, second):
            shown = hal(*args[:2], task["id"], *args[2:], timeout=60)
            assert shown.returncode == 0, shown.stderr
            assert found_in(shown.stdout.encode(), secrets) == [], args
    assert first["status"] == "succeeded" and first["branch"]
    assert second["status"] != "succeeded" and b"secret" in refused.stderr + refused.stdout
    assert found_in(repo_text(demo_repo), [*secrets, UNRELATED]) == []
