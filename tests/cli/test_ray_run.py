"""``hal run --provider ray`` end to end on the real two-node Ray cluster
(tests/ray_cluster.py): the agent runs on a node through the ray relay, its branch comes
back; 20 tasks through ``hal serve`` spread over both nodes; a node killed mid-task."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from tests.ray_cluster import RayCluster
from tests.support.hal import Hal, daemon_tasks, events_of, git, tasks_json

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
    """The tasks ``ids`` once every one is in a final state, polled through the daemon's
    API from this process (no ``hal`` started per poll)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {t["id"]: t for t in daemon_tasks(hal) or [] if t["id"] in ids}
        if len(found) == len(ids) and all(t["status"] in FINAL for t in found.values()):
            return found
        if time.monotonic() > deadline:
            states = sorted(t["status"] for t in found.values())
            pytest.fail(f"tasks still not done after {timeout:g}s: {states}")
        time.sleep(0.5)


def unsucceeded(hal: Hal, tasks: dict[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a failure shows of each task that did not succeed: its status, error, agent's
    exit code and the end of its log (a failed agent records no error of hal's)."""
    shown = []
    for t in tasks.values():
        if t["status"] != "succeeded":
            log = hal("task", "logs", t["id"]).stdout[-1500:]
            shown.append((t["status"], t.get("error"), t.get("exit_code"), log))
    return shown


SPREAD = 4
"""The ``hal`` commands the 20-task test runs at once (as many as the daemon's tasks): the
same commands and checks as one at a time, on both of a CI host's cores."""


@pytest.mark.timeout(480)
def test_twenty_tasks_through_serve_spread_over_both_nodes(
    ray_daemon: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    hal = ray_daemon
    # Ray sandboxes are poolable: warm ones are handed to the first tasks.
    warmed = hal("pool", "warm", "2", "--provider", "ray", "--json")
    assert warmed.returncode == 0, warmed.stderr
    assert json.loads(warmed.stdout)["created"] == {"ray": 2}
    with ThreadPoolExecutor(SPREAD) as pool:
        runs = list(pool.map(
            lambda n: hal("run", "--detach", "--agent", "sh node.sh {{prompt_file}}",
                          f"fix #{n}"),
            range(20)))  # fmt: skip
    for out in runs:
        assert out.returncode == 0, out.stderr
    ids = [out.stdout.strip() for out in runs]
    assert len(set(ids)) == 20
    tasks = wait_final(hal, ids, timeout=240)
    assert {t["status"] for t in tasks.values()} == {"succeeded"}, unsucceeded(hal, tasks)
    with ThreadPoolExecutor(SPREAD) as pool:
        logs = list(pool.map(lambda task_id: hal("task", "logs", task_id).stdout, ids))
        events = list(pool.map(lambda task_id: events_of(hal, task_id), ids))
    nodes = []
    for task_id, log in zip(ids, logs, strict=True):
        assert "test ok" in log
        nodes += re.findall(r"agent ran on ray node (\w+)", log)
        # Nothing lost: every task's fix is on its own branch in the source repo.
        assert "a + b" in git(demo_repo, "show", f"{tasks[task_id]['branch']}:calc.py")
    assert len(nodes) == 20 and set(nodes) == {"head", "w1"}, nodes
    warm = [e for found in events for e in found if e["type"] == "sandbox_acquired"]
    assert sum(1 for e in warm if e["warm"]) >= 1  # a warm ray sandbox ran a task
    assert all(e["provider"] == "ray" for e in warm)


SLOW_AGENT = """#!/bin/sh
echo "agent ran on ray node $HAL_RAY_NODE"
if [ -f progress ]; then echo resumed >> progress; exit 0; fi
echo step1 > progress
sleep 120
"""


@pytest.mark.timeout(300)
@pytest.mark.ray_node("w3", 60)  # the most room, so the task goes there
def test_a_node_killed_mid_task_fails_it_clearly_and_keeps_the_last_sync(
    ray_cluster: RayCluster, hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    port = ray_cluster.node_port("w3")  # killed under the running agent
    use_cluster(hal_env, ray_cluster, call_timeout_s=8, checkpoint_s=1)
    (demo_repo / "slow.sh").write_text(SLOW_AGENT)
    git(demo_repo, "add", "slow.sh")
    git(demo_repo, "commit", "-qm", "slow agent")
    command = [sys.executable, "-m", "hal9999", "run", "--agent", "sh slow.sh {{prompt_file}}",
               "work slowly"]  # fmt: skip
    with subprocess.Popen(
        command,
        cwd=demo_repo,
        env=hal_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as run:
        try:
            deadline = time.monotonic() + 120
            progress = None
            while progress is None or not progress.exists():
                assert time.monotonic() < deadline, "the agent's first checkpoint never came"
                assert run.poll() is None, run.communicate()
                found = tasks_json(hal)
                if found and found[0]["session_dir"]:
                    progress = Path(found[0]["session_dir"]) / "workspace" / "progress"
                time.sleep(0.5)
            assert ray_cluster.kill_worker(port)
            out, err = run.communicate(timeout=150)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    [task] = tasks_json(hal)
    logs = hal("task", "logs", task["id"]).stdout
    assert "agent ran on ray node w3" in logs
    assert "hal: ray node w3 was lost" in logs  # the relay's one line: status 255
    assert "Traceback" not in err
    if task["status"] == "failed":  # failed clearly, the work of the last sync kept
        assert run.returncode != 0 and "ray node w3" in (task["error_message"] or "")
        assert progress.read_text() == "step1\n"
    else:  # retried elsewhere, from the session the last sync brought back
        assert task["status"] == "succeeded" and run.returncode == 0, (out, err)
        assert task["infra_retries"] >= 1
        assert re.search(r"agent ran on ray node (head|w1)", logs)
        shown = git(demo_repo, "show", f"{task['branch']}:progress")
        assert shown == "step1\nresumed"
    wait_until_dead(ray_cluster, "w3")


def wait_until_dead(cluster: RayCluster, name: str) -> None:
    """Until the cluster no longer counts node ``name`` alive (later tests place nowhere
    near it)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    deadline = time.monotonic() + 90
    while any(node.get("Alive") and f"hal_node_{name}" in node.get("Resources", {})
              for node in ray.nodes()):  # fmt: skip
        assert time.monotonic() < deadline, f"ray still counts node {name} alive"
        time.sleep(1)
