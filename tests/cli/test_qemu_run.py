"""``hal run --provider qemu`` end to end: a custom agent in a microVM under tmux."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.hal import Hal, git, tasks_json

pytestmark = [pytest.mark.qemu, pytest.mark.tmux, pytest.mark.timeout(300)]

FIX = "sh -c \"sed -i 's/a - b/a + b/' calc.py && uname -r && echo agent-done\""


@pytest.fixture
def qemu_env(hal_env: dict[str, str]) -> dict[str, str]:
    """hal on the qemu provider, with the run's test image."""
    import os

    hal_env["HAL_PROVIDER"] = "qemu"
    hal_env["HAL_QEMU_IMAGES"] = os.environ["HAL_QEMU_IMAGES"]
    return hal_env


def test_run_in_a_vm_brings_back_the_branch(
    qemu_env: dict[str, str], hal: Hal, demo_repo: Path
) -> None:
    out = hal("run", "--agent", FIX, "fix the failing test", timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "agent-done" in out.stdout
    # The agent ran in the guest's kernel, not the host's.
    assert (
        "amd64" in out.stdout
        and subprocess.check_output(["uname", "-r"], text=True).strip() not in out.stdout
    )
    [task] = tasks_json(hal)
    assert task["status"] == "succeeded" and task["provider"] == "qemu"
    assert "a + b" in git(demo_repo, "show", f"hal/{task['id']}:calc.py")
    assert "a - b" in (demo_repo / "calc.py").read_text()
    assert "+    return a + b" in Path(task["session_dir"], "result.patch").read_text()
    assert task["sandbox_id"] is None or not _vm_alive(task["sandbox_id"])


def _vm_alive(sandbox_id: str) -> bool:
    from hal9999.providers.qemu import vm as qemuvm

    return sandbox_id in qemuvm.find_vms()


def test_stop_keeps_the_workspace_and_resume_finishes(
    qemu_env: dict[str, str], hal: Hal, demo_repo: Path
) -> None:
    agent = "sh -c 'test -f done.txt && exit 0; echo first > done.txt; sleep 120'"
    out = hal("run", "--detach", "--agent", agent, "wait", timeout=120)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    deadline = time.monotonic() + 120
    while True:
        [task] = tasks_json(hal)
        if (
            task["status"] == "running"
            and Path(task["session_dir"], "workspace", "done.txt").exists()
        ):
            break
        assert time.monotonic() < deadline, task
        time.sleep(0.5)
    sandbox_id = task["sandbox_id"]
    assert _vm_alive(sandbox_id)
    stop = hal("task", "stop", task_id, timeout=120)
    assert stop.returncode == 0, stop.stderr
    [task] = tasks_json(hal)
    assert task["status"] == "stopped"
    assert not _vm_alive(sandbox_id), "stop ends the VM"
    assert Path(task["session_dir"], "workspace", "done.txt").read_text() == "first\n"

    resumed = hal("task", "resume", task_id, "--json", timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["status"] == "succeeded" and final["resumes"] == 1
    assert "done.txt" in Path(final["session_dir"], "result.patch").read_text()
