"""The real agent CLIs fix the planted bug against the scripted server.

Each run goes through `python -m tests.llm_server.capture` inside `unshare -n` (a network
namespace with loopback only), so nothing can leave the machine. Skipped when the CLI is not
installed (scripts/install-agents.sh installs them) or namespaces are not available.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .scripts import SCRIPTS

REPO_ROOT = Path(__file__).resolve().parents[2]


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("agent", sorted(SCRIPTS))
def test_real_cli_fixes_the_bug(agent: str, tmp_path: Path) -> None:
    if not shutil.which(agent):
        pytest.skip(f"{agent} is not installed: run scripts/install-agents.sh")
    if not _can_unshare():
        pytest.skip("needs `unshare -n` (root) to keep the agent off the network")
    capture = [sys.executable, "-m", "tests.llm_server.capture", agent]
    capture += ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    capture += ["--timeout", "90"]
    shell = "ip link set lo up && exec " + " ".join(f"'{arg}'" for arg in capture)
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", shell],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    run_file = tmp_path / "out" / agent / "run.json"
    assert run_file.exists(), done.stderr[-2000:]
    run = json.loads(run_file.read_text())
    stderr = (tmp_path / "out" / agent / "stderr.txt").read_text()[-2000:]
    assert run["exit_code"] == 0, stderr
    assert run["fixed"] and run["test_passed"], stderr
    assert run["model_calls"] >= 1
