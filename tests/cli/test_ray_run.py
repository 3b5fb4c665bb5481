"""``hal run --provider ray`` end to end on the real two-node Ray cluster
(tests/ray_cluster.py): the agent runs on a node through the ray relay, its branch comes
back; 20 tasks through ``hal serve`` spread over both nodes; a node killed mid-task."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.cli.conftest import Hal, git, tasks_json
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
