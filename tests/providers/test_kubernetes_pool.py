"""``hal pool`` with the ``kubernetes`` provider: its warm pods are the provider's own (free
pods in the cluster, claimed by label in ``create``), so ``hal pool warm`` fills them through
``fill_warm``, ``hal pool status`` counts them (also after the daemon was killed), ``hal
pool drain`` deletes the free ones, and a task claims a warm pod."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.conftest import demo_repo, hal, reaped  # noqa: F401
from tests.fakes.k8s_api import FakeKube
from tests.support.daemon import poll, serve_info
from tests.support.hal import Hal

from hal9999.providers.k8s.manifests import CLAIM

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow]


@pytest.fixture
def hal_env(fake_k8s: FakeKube, tmp_path: Path) -> dict[str, str]:
    """hal's environment, on the fake cluster (overrides tests/cli's)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HAL_") or k.startswith("HAL_K8S_")}  # fmt: skip
    env |= {"HAL_HOME": str(tmp_path / "halhome"), "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
            "HAL_PROVIDER": "kubernetes"}  # fmt: skip
    return env


@pytest.fixture
def serving(hal: Hal) -> Iterator[Hal]:  # noqa: F811
    out = hal("serve", "--detach", "--json")
    assert out.returncode == 0, out.stderr
    yield hal
    assert hal("serve", "--stop").returncode == 0


def free_pods(fake: FakeKube) -> list[str]:
    namespace = os.environ["HAL_K8S_NAMESPACE"]
    return sorted(
        name
        for (ns, name), pod in fake.pods.items()
        if ns == namespace and pod.body["metadata"]["labels"].get(CLAIM) == "free"
    )


def test_hal_pool_warms_and_drains_kubernetes_warm_pods(
    fake_k8s: FakeKube,
    serving: Hal,
    hal_env: dict[str, str],
    reaped: None,  # noqa: F811
) -> None:
    home = Path(hal_env["HAL_HOME"])
    out = serving("pool", "warm", "2", "--provider", "kubernetes", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["created"] == {"kubernetes": 2}
    assert len(free_pods(fake_k8s)) == 2
    again = serving("pool", "warm", "2", "--provider", "kubernetes", "--json", timeout=120)
    assert json.loads(again.stdout)["created"] == {"kubernetes": 0}  # already there
    # A task's sandbox is one of them, claimed (no pod made for it).
    made = fake_k8s.pods_created
    run = serving("run", "--agent", "sh -c 'echo claimed > c.txt'", "go", "--json", timeout=180)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "succeeded"
    assert fake_k8s.pods_created == made and len(free_pods(fake_k8s)) == 1
    status = serving("pool", "status")
    assert "kubernetes: 1 free warm sandbox(es), kept by the provider" in status.stdout
    # The free pod outlives a daemon killed with -9 (a clean stop drains it); the next
    # daemon of the home still shows it and drains it.
    pid = serve_info(home)["pid"]
    os.kill(pid, signal.SIGKILL)
    poll("the daemon to die", lambda: not Path(f"/proc/{pid}").exists())
    assert serving("serve", "--detach", "--json").returncode == 0
    assert len(free_pods(fake_k8s)) == 1
    status = serving("pool", "status", "--json")
    assert json.loads(status.stdout)["own_warm"] == {"kubernetes": {"free": 1}}
    drained = serving("pool", "drain", "--json")
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout)["destroyed"] == 1
    assert free_pods(fake_k8s) == []
    assert json.loads(drained.stdout)["pool"]["own_warm"] == {"kubernetes": {"free": 0}}
