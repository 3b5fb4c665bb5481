"""A whole ``hal run --provider kubernetes`` against the fake API server: a custom agent in a
pod (launched through the relay), the result back as a branch of the source repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.fakes.k8s_api import FakeKube
from tests.providers.test_ssh_run import AGENT, git

pytestmark = [pytest.mark.bwrap, pytest.mark.slow]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (path / "test_calc.py").write_text(
        "import calc\n\nassert calc.add(2, 3) == 5\nprint('test ok')\n"
    )
    (path / "agent.sh").write_text(AGENT)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "initial")
    return path


def hal(repo: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    # The fake's settings (HAL_K8S_*) pass; every other HAL_ variable of the test run not.
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("HAL_") or k.startswith("HAL_K8S_")}  # fmt: skip
    environ |= {"HAL_HOME": str(tmp_path / "halhome"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", *args], cwd=repo, env=environ | (env or {}),
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout


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
