"""``hal run --provider docker`` end to end: a custom agent in a Podman container under tmux."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tests.cli.quick_agents import quick_agents_path
from tests.support.hal import Hal, git, tasks_json

pytestmark = [pytest.mark.podman, pytest.mark.tmux, pytest.mark.timeout(300)]

FIX = (
    "sh -c \"sed -i 's/a - b/a + b/' calc.py && cat /proc/1/cmdline | tr '\\\\0' ' ' "
    '&& id -u && echo agent-done"'
)


@pytest.fixture
def docker_env(hal_env: dict[str, str]) -> dict[str, str]:
    """hal on the docker provider, against the run's Podman service."""
    hal_env["HAL_PROVIDER"] = "docker"
    hal_env["HAL_DOCKER_URL"] = os.environ["HAL_DOCKER_URL"]
    return hal_env


def test_run_in_a_container_brings_back_the_branch(
    docker_env: dict[str, str], hal: Hal, demo_repo: Path
) -> None:
    out = hal("run", "--agent", FIX, "fix the failing test", timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "agent-done" in out.stdout
    # The agent ran in the container (its PID 1 is the container's init), never as root.
    assert "tini -s -- sleep infinity" in out.stdout
    assert "\n0\n" not in out.stdout
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded" and task["provider"] == "docker"
    assert "a + b" in git(demo_repo, "show", f"hal/{task['id']}:calc.py")
    assert "a - b" in (demo_repo / "calc.py").read_text()
    assert "+    return a + b" in Path(task["session_dir"], "result.patch").read_text()
    import docker

    client = docker.DockerClient(base_url=os.environ["HAL_DOCKER_URL"])
    try:
        leftovers = client.containers.list(all=True, filters={"label": "hal9999.sandbox"})
        assert [c.name for c in leftovers if c.name == f"hal-{task['sandbox_id']}"] == []
    finally:
        client.close()


def test_doctor_covers_the_docker_provider_and_pm2(
    docker_env: dict[str, str], hal: Hal, tmp_path: Path
) -> None:
    import json

    # The agent CLIs answer at once (tests/cli/quick_agents.py): this is about docker and PM2.
    quick = {"PATH": quick_agents_path(tmp_path / "quick-agents", os.environ["PATH"])}
    out = hal("doctor", "--json", env=quick, timeout=120)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["docker engine"]["ok"] and "Podman" in checks["docker engine"]["detail"]
    assert checks["docker image"]["ok"] and checks["docker image"]["detail"] == "hal9999:default"
    assert checks["docker sandboxes"]["detail"].startswith("0 ")
    silent = hal("doctor", "--json", env=quick | {"HAL_DOCKER_URL": "unix:///nonexistent.sock"})
    checks = {c["name"]: c for c in json.loads(silent.stdout)["checks"]}
    assert not checks["docker engine"]["ok"] and "setup-podman.sh" in checks["docker engine"]["fix"]


# The agent leaves a writer that cleared its environment (no exec token finds it) in its own
# session, then hangs until the timeout stops it. Each tick is written aside and renamed into
# place: a plain `>` empties the file before `date` writes it, and a stop landing between the
# two left an empty tick, a patch with no line to compare.
LINGER = (
    "sh -c \"(env -i setsid sh -c 'while :; do date +%s%N > /workspace/.t; "
    "mv /workspace/.t /workspace/tick; sleep 0.05; done' >/dev/null 2>&1 &) ; sleep 600\""
)


def test_a_timed_out_agent_and_what_it_left_stop_before_its_work_is_collected(
    docker_env: dict[str, str], hal: Hal, demo_repo: Path
) -> None:
    # Killing the engine CLI's exec on the host ends nothing in the container: without the
    # container restarted first, the writer goes on during collection (and until destroy),
    # so the session's checkout moves on from what the collected patch carries.
    out = hal("run", "--agent", LINGER, "--timeout", "6", "go", timeout=180)
    assert "Traceback" not in out.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "timed_out", task
    session = Path(task["session_dir"])
    patch = (session / "result.patch").read_text()  # a timed-out run's work stays there
    tick = patch.split("+++ b/tick\n", 1)[1].split("diff --git", 1)[0]
    [collected] = [line[1:] for line in tick.splitlines() if line[:1] == "+"]
    left = (session / "workspace" / "tick").read_text().strip()
    assert left == collected, "the workspace changed after its work was collected"


# The agent exits at once, leaving a writer in the workspace behind it.
LEAVE = "sh -c '(while :; do date +%s%N >> f; sleep 0.01; done) & exit 0'"


def test_what_an_agent_that_exited_left_stops_before_its_work_is_collected(
    docker_env: dict[str, str], hal: Hal, demo_repo: Path
) -> None:
    # The exec of an agent that exited ends nothing it left in the container: without the
    # leftovers ended first, the writer goes on during collection, so the session's checkout
    # holds lines the collected patch does not (and the agent acts past its end).
    out = hal("run", "--agent", LEAVE, "go", timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded", task
    session = Path(task["session_dir"])
    patch = (session / "result.patch").read_text()
    collected = [line[1:] for line in patch.splitlines() if line[:1] == "+" and "+++" not in line]
    assert collected, "the writer never ran"
    written = session / "workspace" / "f"
    left = written.read_text().split()
    time.sleep(0.5)
    assert written.read_text().split() == left, "the writer runs on after the task ended"
    assert left == collected, "the workspace changed after its work was collected"
    assert "a - b" in git(demo_repo, "show", f"hal/{task['id']}:calc.py")
