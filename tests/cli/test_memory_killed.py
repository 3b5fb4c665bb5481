"""An agent its sandbox's memory limit kills is said to be so, with the setting to raise, on
both paths (in-process and through ``hal serve``): not a bare "exited with status 137"."""

from __future__ import annotations

import json

import pytest
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.cgroup]

GREEDY = "python3 -c 'b = bytearray(1 << 30); print(len(b))' {{prompt_file}}"
MODEST = "sh -c 'exit 137' {{prompt_file}}"  # the same status, its own choice


def test_an_agent_killed_by_the_memory_limit_is_told_so(hal: Hal, cli_path: str) -> None:
    out = hal("run", "--agent", GREEDY, "x", "--json", env={"HAL_MEMORY_MB": "64"}, timeout=120)
    task = json.loads(out.stdout)
    assert out.returncode == 5 and task["status"] == "failed", out.stderr
    assert task["error_message"].startswith(
        "agent custom was killed by the sandbox's memory limit (64 MiB)"
    ), task["error_message"]
    assert "HAL_MEMORY_MB" in task["error_message"]
    out = hal("run", "--agent", MODEST, "x", "--json", env={"HAL_MEMORY_MB": "64"}, timeout=120)
    task = json.loads(out.stdout)
    assert task["error_message"].startswith("agent custom exited with status 137"), task
