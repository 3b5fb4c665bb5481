"""``hal run --provider ray`` end to end on the real two-node Ray cluster
(tests/ray_cluster.py): the agent runs on a node through the ray relay, its branch comes
back; 20 tasks through ``hal serve`` spread over both nodes; a node killed mid-task."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cli.conftest import Hal, events_of, git, tasks_json
from tests.ray_cluster import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow]

AGENT = "sh agent.sh {{prompt_file}}"


def use_cluster(hal_env: dict[str, str], cluster: RayCluster, **extra: object) -> None:
    """Point the hal of ``hal_env`` at ``cluster`` through its config file."""
    settings = cluster.settings(**extra)
    lines = ["[providers.ray]"]
    for key, value in settings.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("\n".join(lines) + "\n")
    hal_env["HAL_PROVIDER"] = "ray"


def test_run_on_ray_brings_back_the_agents_branch(
    ray_cluster: RayCluster, hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    use_cluster(hal_env, ray_cluster)
    out = hal("run", "--provider", "ray", "--agent", AGENT, "fix the failing test", timeout=240)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "test ok" in out.stdout  # the agent's output streamed back from the node
    assert "Traceback" not in out.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded" and task["provider"] == "ray"
    assert "a + b" in git(demo_repo, "show", f"{task['branch']}:calc.py")
    assert "a - b" in (demo_repo / "calc.py").read_text()


NODE_AGENT = """#!/bin/sh
echo "agent ran on ray node $HAL_RAY_NODE"
exec sh agent.sh "$1"
"""


@pytest.fixture
def ray_daemon(
    ray_cluster: RayCluster, hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> Iterator[Hal]:
    """``hal serve --detach`` on the cluster, four tasks at once; stopped at the end."""
    use_cluster(hal_env, ray_cluster)
    (demo_repo / "node.sh").write_text(NODE_AGENT)
    git(demo_repo, "add", "node.sh")
    git(demo_repo, "commit", "-qm", "node agent")
    env = {"HAL_MAX_CONCURRENT": "4"}
    out = hal("serve", "--detach", "--json", env=env)
    assert out.returncode == 0, out.stderr
    try:
        yield hal
    finally:
        for task in tasks_json(hal):
            if task["status"] not in FINAL:
                hal("task", "stop", task["id"])
        stopped = hal("serve", "--stop")
        assert stopped.returncode == 0, stopped.stderr


FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def wait_final(hal: Hal, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The tasks ``ids`` once every one is in a final state."""
    deadline = time.monotonic() + timeout
    while True:
        found = {t["id"]: t for t in tasks_json(hal) if t["id"] in ids}
        if len(found) == len(ids) and all(t["status"] in FINAL for t in found.values()):
            return found
        if time.monotonic() > deadline:
            states = sorted(t["status"] for t in found.values())
            pytest.fail(f"tasks still not done after {timeout:g}s: {states}")
        time.sleep(1)


@pytest.mark.timeout(480)
def test_twenty_tasks_through_serve_spread_over_both_nodes(
    ray_daemon: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    hal = ray_daemon
    # Ray sandboxes are poolable: warm ones are handed to the first tasks.
    warmed = hal("pool", "warm", "2", "--provider", "ray", "--json")
    assert warmed.returncode == 0, warmed.stderr
    assert json.loads(warmed.stdout)["created"] == {"ray": 2}
    ids = []
    for n in range(20):
        out = hal("run", "--detach", "--agent", "sh node.sh {{prompt_file}}", f"fix #{n}")
        assert out.returncode == 0, out.stderr
        ids.append(out.stdout.strip())
    tasks = wait_final(hal, ids, timeout=240)
    assert {t["status"] for t in tasks.values()} == {"succeeded"}, [
        (t["status"], t["error"]) for t in tasks.values() if t["status"] != "succeeded"
    ]
    nodes = []
    for task_id in ids:
        log = hal("task", "logs", task_id).stdout
        assert "test ok" in log
        nodes += re.findall(r"agent ran on ray node (\w+)", log)
        # Nothing lost: every task's fix is on its own branch in the source repo.
        assert "a + b" in git(demo_repo, "show", f"{tasks[task_id]['branch']}:calc.py")
    assert len(nodes) == 20 and set(nodes) == {"head", "w1"}, nodes
    warm = [e for t in ids for e in events_of(hal, t) if e["type"] == "sandbox_acquired"]
    assert sum(1 for e in warm if e["warm"]) >= 1  # a warm ray sandbox ran a task
    assert all(e["provider"] == "ray" for e in warm)
