"""A hive agent's turns take their API key from ``hal serve``'s own environment (the
operator's shell that sends a message hands over none): a daemon started without it says so
at its start, for each hive agent it would leave keyless, and the turn that fails for it
says where the key was looked for and how to give it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import tests.e2e.conftest as e2e
from tests.e2e.conftest import KEY_VAR, HalCli, requires_cli

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(300)]

bug_repo, dummy_key, hal_cli = e2e.bug_repo, e2e.dummy_key, e2e.hal_cli

IN_DAEMON = (
    f"agent claude has no API key: {KEY_VAR} is not set in hal serve's environment (a hive "
    "agent's calls take the key hal serve was started with; hal's LLM gateway keeps it on "
    f"the host): restart hal serve with {KEY_VAR}=... exported or `hal auth claude login`"
)


def first_turn(hal: HalCli, name: str, timeout: float = 150) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = hal("agent", "show", name, "--json")
        assert out.returncode == 0, out.stderr
        agent = json.loads(out.stdout)
        if agent["task_id"] and [t for t in agent["recent_turns"] if t["result"]]:
            return agent  # type: ignore[no-any-return]
        time.sleep(0.5)
    pytest.fail(f"{name} ended no turn: {agent}")


def test_a_daemon_without_the_key_says_so_at_start_and_in_the_turn(hal_cli: HalCli) -> None:
    requires_cli("claude")
    # The key's variable named, a local address that is never reached: no key, no call.
    hal_cli.configure("claude", base_url="http://127.0.0.1:9", model="scripted-model")
    del hal_cli.env[KEY_VAR]
    started = hal_cli("serve", "--detach")
    assert started.returncode == 0, started.stderr
    assert "warning" not in started.stderr  # no hive agent yet
    try:
        out = hal_cli("agent", "spawn", "fixer", "--agent", "claude", "--repo", str(hal_cli.cwd))
        assert out.returncode == 0, out.stderr
        assert hal_cli("msg", "send", "fixer", "fix the bug").returncode == 0
        agent = first_turn(hal_cli, "fixer")
        task = json.loads(hal_cli("task", "show", agent["task_id"], "--json").stdout)
        assert task["status"] == "failed", task
        assert IN_DAEMON in task["error_message"], task

        assert hal_cli("serve", "--stop").returncode == 0
        again = hal_cli("serve", "--detach")
        assert again.returncode == 0, again.stderr
        assert f"hal: warning: hive agent fixer: {IN_DAEMON}\n" in again.stderr
        with_key = hal_cli("serve", "--stop"), hal_cli("serve", "--detach", env={KEY_VAR: "k"})
        assert with_key[1].returncode == 0, with_key[1].stderr
        assert "warning" not in with_key[1].stderr
    finally:
        hal_cli("serve", "--stop")
