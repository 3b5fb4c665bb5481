"""A whole ``hal run --provider kubernetes`` against the fake API server: a custom agent in a
pod (launched through the relay), the result back as a branch of the source repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.e2e.conftest import HalCli, bug_repo, dummy_key, files_containing, hal_cli  # noqa: F401
from tests.fakes.k8s_api import FakeKube
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import run_bash_agent
from tests.support.hal import git
from tests.support.ssh import calc_repo
from tests.support.ssh import hal as ssh_hal

pytestmark = [pytest.mark.bwrap, pytest.mark.slow]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return calc_repo(tmp_path)


def hal(where: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The ssh tests' ``hal``, with the fake's settings (HAL_K8S_*) passed on."""
    k8s = {k: v for k, v in os.environ.items() if k.startswith("HAL_K8S_")}
    return ssh_hal(where, tmp_path, *args, env=k8s | (env or {}))


def test_hal_run_with_a_custom_agent_in_a_pod(
    fake_k8s: FakeKube, repo: Path, tmp_path: Path
) -> None:
    secret = "tok-k8s-5eed"
    out = hal(
        repo, tmp_path, "run", "--provider", "kubernetes", "--env", "API_TOKEN",
        "--agent", "sh agent.sh {{prompt_file}}", "fix the test", "--json",
        env={"API_TOKEN": secret},
    )  # fmt: skip
    task = json.loads(out)
    assert task["status"] == "succeeded", task
    assert task["files_changed"] == 1
    assert "a + b" in git(repo, "show", f"{task['branch']}:calc.py")
    log = hal(repo, tmp_path, "task", "logs", task["id"])
    assert "agent: prompt: fix the test" in log and "test ok" in log
    assert "token is set" in log and secret not in log
    urls = [url for method, url in fake_k8s.calls if method == "EXEC"]
    assert urls and not any(secret in url for url in urls)
    namespace = os.environ["HAL_K8S_NAMESPACE"]
    assert [key for key in fake_k8s.pods if key[0] == namespace] == []  # the pod went


def test_a_pod_with_no_network_calls_the_model_and_egress_through_the_gateway(
    fake_k8s: FakeKube,
    hal_cli: HalCli,  # noqa: F811
    bug_repo: Path,  # noqa: F811
    upstream: StormUpstream,
    dummy_key: str,  # noqa: F811
) -> None:
    """The gateway's sockets reach the pod over the exec stream (sockmux): the agent's
    forwarder in the pod (no network: the fake's pod has its own empty network namespace,
    the NetworkPolicy denies all egress) calls the model and the egress proxy through them,
    and the real key never enters the pod (the canary: every exec's URL and stdin)."""
    hal_cli.env |= {k: v for k, v in os.environ.items() if k.startswith("HAL_K8S_")}
    hal_cli.env["HAL_PROVIDER"] = "kubernetes"
    fake_k8s.canary = dummy_key.encode()
    run_bash_agent(
        hal_cli, bug_repo, upstream, dummy_key, "kubernetes", command="/hal/ws/caller.sh"
    )  # the workspace as a pod sees it
    assert fake_k8s.canary_seen == 0, "the real key went into the pod"
    assert any("hal-sockmux" in url for method, url in fake_k8s.calls if method == "EXEC")
