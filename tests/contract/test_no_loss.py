"""No work is lost by a stop, on every path and every provider that runs here: an agent
commits, leaves a file uncommitted and works on; the task is stopped through the task API
mid-run; the session's checkout then holds both, its ``HEAD`` and objects whole, and a
resume carries the same work on to the task's branch."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.contract.conftest import TaskPath
from tests.support.hal import git
from tests.support.no_loss import (
    AGENT,
    WORK_TIMEOUT_S,
    log_has,
    plant_agent,
    settled,
    started,
    stopped_work_is_whole,
)
from tests.support.ssh import ssh_config

from hal9999.store import TaskRecord

# ssh_connections_closed: a stop through the in-process API reaches the ssh, morph and
# digitalocean hosts from this test's event loop; their connections close with it.
pytestmark = [
    pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(420),
    pytest.mark.usefixtures("ssh_connections_closed"),
]  # fmt: skip


async def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``check`` until it holds (or fail naming ``what``)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.ssh
async def test_a_stop_keeps_the_work_on_ssh(task_path: TaskPath, sshd_server: Any) -> None:
    # Checkpoints off: the stop's own pull is what brings the work back.
    task_path.config_file.write_text(ssh_config(sshd_server, checkpoint_s=3600))
    await stopped_work_is_whole(task_path, "ssh")


@pytest.mark.bwrap
async def test_a_stop_keeps_the_work_on_bwrap(task_path: TaskPath) -> None:
    await stopped_work_is_whole(task_path, "bwrap")


async def test_a_stop_keeps_the_work_on_local(task_path: TaskPath) -> None:
    task_path.config_file.write_text('[pool.local]\nnetwork = "host"\n')  # it has no other
    await stopped_work_is_whole(task_path, "local")


@pytest.mark.ssh
async def test_a_stop_keeps_the_work_on_morph(
    fake_morph: Any, fake_morph_settings: dict[str, Any], task_path: TaskPath
) -> None:
    # The fake Morph API runs in this process: the daemon reaches it on loopback.
    # Its URL in the config: the path's home drops every HAL_* variable of the shell.
    settings = {**fake_morph_settings, "api_url": fake_morph.url}
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    task_path.config_file.write_text(
        "[providers.morph]\n" + "\n".join(lines) + '\n\n[pool.morph]\nnetwork = "host"\n'
    )
    await stopped_work_is_whole(task_path, "morph")


@pytest.mark.ssh
async def test_a_stop_keeps_the_work_on_digitalocean(
    fake_do: Any, fake_do_settings: dict[str, Any], task_path: TaskPath,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from tests.fakes.do_api import TOKEN

    # Its token under the name that is not HAL_*: the path's home drops those of the shell.
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", TOKEN)
    settings = {**fake_do_settings, "api_url": fake_do.url}
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    task_path.config_file.write_text(
        "[providers.digitalocean]\n" + "\n".join(lines)
        + '\n\n[pool.digitalocean]\nnetwork = "host"\n'
    )  # fmt: skip
    await stopped_work_is_whole(task_path, "digitalocean")


@pytest.mark.bwrap
async def test_a_stop_keeps_the_work_on_kubernetes(
    fake_k8s: Any, fake_k8s_settings: dict[str, Any], task_path: TaskPath, tmp_path: Path
) -> None:
    # The fake's settings in the config: the path's home drops every HAL_* variable.
    import secrets

    settings = {
        **fake_k8s_settings,
        "kubeconfig": str(fake_k8s.kubeconfig(tmp_path / "contract-kubeconfig")),
        "image": "debian:bookworm",
        "namespace": f"hal-t{secrets.token_hex(4)}",
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    task_path.config_file.write_text("[providers.kubernetes]\n" + "\n".join(lines) + "\n")
    await stopped_work_is_whole(task_path, "kubernetes")


@pytest.mark.qemu
async def test_a_stop_keeps_the_work_on_qemu(task_path: TaskPath) -> None:
    # The test image's directory in the config: the path's home drops every HAL_* variable.
    from tests.qemu_image import images_dir

    task_path.config_file.write_text(f'[providers.qemu]\nimages_dir = "{images_dir()}"\n')
    await stopped_work_is_whole(task_path, "qemu")


@pytest.mark.podman
async def test_a_stop_keeps_the_work_on_docker(task_path: TaskPath) -> None:
    await stopped_work_is_whole(task_path, "docker")


STALLING_AGENT = """#!/bin/sh
echo run >> runs.log
# The collection's `git add` runs this filter on result.txt, holding the index lock: the
# first time it waits (the test cancels meanwhile), then it passes the file through.
git config filter.wait.clean \\
  '[ -e .git/once ] && exec cat; touch .git/once; sleep 120; cat'
mkdir -p .git/info && echo 'result.txt filter=wait' > .git/info/attributes
echo done > result.txt
"""
"""An agent whose first collection stalls in ``git add`` (the index locked)."""
GIT_LOCKS = ("index.lock", "HEAD.lock")


def locks_in(workspace: Path) -> list[str]:
    """The git lock files in the checkout's git directory."""
    return sorted(str(p.relative_to(workspace)) for p in (workspace / ".git").rglob("*.lock"))


@pytest.mark.bwrap
@pytest.mark.parametrize("how", ["api", "sigint", "sigterm", "ctrl-c"])
async def test_a_cancel_while_collecting_leaves_no_lock_and_resume_collects(
    task_path: TaskPath, how: str
) -> None:
    (task_path.repo / "stall_agent.sh").write_text(STALLING_AGENT)
    git(task_path.repo, "add", "stall_agent.sh")
    git(task_path.repo, "commit", "-qm", "stalling agent")

    def stalled(task: TaskRecord) -> bool:
        return (Path(task.session_dir) / "workspace" / ".git" / "once").exists()

    if how == "api":
        task = await started(task_path, "sh stall_agent.sh", "bwrap", stalled,
                             "the collection's git add")  # fmt: skip
        cancelled = await task_path.api.cancel(task.id)
        assert cancelled.status == "cancelled", cancelled.status
    else:  # `hal run` in the foreground, told to end: a SIGINT or SIGTERM to hal alone, or
        # a terminal's Ctrl-C, SIGINT to its whole process group (what hal started in it too)
        caller = subprocess.Popen(  # noqa: ASYNC220 - signalled, then waited in a thread
            [sys.executable, "-m", "hal9999", "run", "--provider", "bwrap", "--agent",
             "sh stall_agent.sh", "stall"], cwd=task_path.repo, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + WORK_TIMEOUT_S
            while not (tasks := await task_path.api.list()) or not stalled(tasks[0]):
                assert caller.poll() is None, caller.communicate()[1]
                assert time.monotonic() < deadline, "timed out waiting for the collection"
                await asyncio.sleep(0.2)
            task = tasks[0]
            if how == "ctrl-c":
                os.killpg(caller.pid, signal.SIGINT)
            else:
                caller.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
            await asyncio.to_thread(caller.wait, WORK_TIMEOUT_S)
        finally:
            if caller.poll() is None:
                caller.kill()
            caller.communicate()
    ended = await settled(task_path, task.id)
    assert ended.status == "cancelled", (ended.status, ended.error_message)
    workspace = Path(task.session_dir) / "workspace"
    assert locks_in(workspace) == [], f"{task_path.name}/{how}: a lock is left in the session"
    resumed = await task_path.api.resume(task.id)
    assert resumed.status == "succeeded", (resumed.status, resumed.error_message)
    assert git(task_path.repo, "show", f"{resumed.branch}:result.txt") == "done"


@pytest.mark.bwrap
async def test_a_resume_over_a_checkout_without_its_head_says_so(task_path: TaskPath) -> None:
    plant_agent(task_path.repo)
    task = await started(task_path, AGENT, "bwrap", lambda t: log_has(t, "WORK-DONE"),
                         "the agent's work")  # fmt: skip
    await task_path.api.stop(task.id)
    stopped = await settled(task_path, task.id)
    workspace = Path(stopped.session_dir) / "workspace"
    # The commit HEAD names is gone (a bring-back cut short loses objects like this).
    head = subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(workspace), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    loose = workspace / ".git" / "objects" / head[:2] / head[2:]
    loose.chmod(0o600)
    loose.unlink()
    resumed = await task_path.api.resume(stopped.id)
    assert resumed.status == "failed", resumed.status
    assert resumed.error_code == "checkout_damaged", (resumed.error_code, resumed.error_message)
    message = resumed.error_message or ""
    assert "no valid HEAD commit" in message and "\n" not in message, message
    assert not log_has(resumed, "RESUMED-WITH-THE-WORK"), "no agent ran over it"
