"""After ``kill -9`` of a foreground ``hal run`` the agent lives on in tmux: it stays
attachable and followable, and ``hal task resume`` adopts it instead of killing it (never two
runs on one workspace)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.adoption import AGENT, wait_until
from tests.support.cli import assert_no_leftovers, wait_for_status
from tests.support.hal import Hal, git, start_hal, tasks_json, tasks_now

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


def attach_screen(hal_env: dict[str, str], task_id: str, sock_dir: Path, want: str) -> str:
    """Run ``hal task attach`` in a detached outer tmux and return what its screen shows."""
    tmux = shutil.which("tmux")
    assert tmux is not None
    outer = [tmux, "-S", str(sock_dir / "outer.sock")]
    env_args = [
        arg for key in ("HAL_HOME", "XDG_CONFIG_HOME") for arg in ("-e", f"{key}={hal_env[key]}")
    ]
    subprocess.run(
        [*outer, "new-session", "-d", *env_args, "-x", "120", "-y", "20",
         sys.executable, "-m", "hal9999", "task", "attach", task_id],
        check=True,
    )  # fmt: skip
    screen = ""
    deadline = time.monotonic() + 15
    try:
        while want not in screen and time.monotonic() < deadline:
            shown = subprocess.run([*outer, "capture-pane", "-p"], capture_output=True, text=True)
            screen = shown.stdout
            time.sleep(0.1)
    finally:
        subprocess.run([*outer, "kill-server"], check=False, capture_output=True)
    return screen


def test_kill_9_leaves_agent_attachable_followable_and_resume_adopts_it(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, sock_dir: Path
) -> None:
    runner = start_hal(hal_env, demo_repo, "run", "--agent", AGENT, "work")
    task = wait_for_status(hal, "running")
    log = Path(str(task["session_dir"]), "agent.log")
    wait_until(lambda: log.exists() and "agent-started" in log.read_text(), "the agent")
    runner.kill()
    runner.communicate()
    [task] = tasks_json(hal)
    task_id = task["id"]
    assert task["status"] == "interrupted"

    # attach opens the live agent's pane.
    assert "agent-started" in attach_screen(hal_env, task_id, sock_dir, "agent-started")

    # logs -f keeps following while the agent lives.
    follower = start_hal(hal_env, demo_repo, "task", "logs", "-f", task_id)
    time.sleep(2)
    assert follower.poll() is None, follower.communicate()

    # A new prompt cannot be given to a live agent: refused, and the agent is left alone.
    prompted = hal("task", "resume", task_id, "another prompt")
    assert prompted.returncode == 9 and "still running" in prompted.stderr, prompted.stderr
    assert "Traceback" not in prompted.stderr

    # Two resumes at once: one adopts the live agent, the other is refused...
    racing = [start_hal(hal_env, demo_repo, "task", "resume", task_id, "--json") for _ in range(2)]
    wait_until(lambda: tasks_now(hal)[0]["status"] == "running", "the adoption")
    # ...and so is another one while that run lives.
    second = hal("task", "resume", task_id)
    assert second.returncode == 9, second.stderr
    assert "running" in second.stderr and "Traceback" not in second.stderr

    Path(str(task["session_dir"]), "workspace", "go").touch()
    done = [(proc, *proc.communicate(timeout=60)) for proc in racing]
    shown = [(proc.returncode, out, err) for proc, out, err in done]
    assert sorted(proc.returncode for proc, _, _ in done) == [0, 9], shown
    [(_, out, _)] = [d for d in done if d[0].returncode == 0]
    [(_, _, refused)] = [d for d in done if d[0].returncode == 9]
    assert "Traceback" not in refused and "hal: error:" in refused, refused
    final = json.loads(out)
    assert final["status"] == "succeeded" and final["resumes"] == 0, final
    assert "late.txt" in Path(final["session_dir"], "result.patch").read_text()
    assert git(demo_repo, "show", f"hal/{task_id}:late.txt") == "late"

    followed, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert "agent-started" in followed and "agent-finished" in followed
    assert_no_leftovers(final)


def test_resume_through_hal_serve_adopts_too(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    assert hal("serve", "--detach").returncode == 0
    try:
        # A foreground run that bypasses the daemon, killed while its agent runs.
        alone = {**hal_env, "HAL_NO_DAEMON": "1"}
        runner = start_hal(alone, demo_repo, "run", "--agent", AGENT, "work")
        task = wait_for_status(hal, "running")
        log = Path(str(task["session_dir"]), "agent.log")
        wait_until(lambda: log.exists() and "agent-started" in log.read_text(), "the agent")
        runner.kill()
        runner.communicate()
        task_id = str(task["id"])

        resumer = start_hal(hal_env, demo_repo, "task", "resume", task_id, "--json")
        daemon_pid = json.loads(Path(hal_env["HAL_HOME"], "run", "serve.json").read_text())["pid"]
        wait_until(lambda: tasks_now(hal)[0]["runner_pid"] == daemon_pid, "the daemon's adoption")
        assert tasks_json(hal)[0]["status"] == "running"
        Path(str(task["session_dir"]), "workspace", "go").touch()
        out, err = resumer.communicate(timeout=60)
        assert resumer.returncode == 0, err
        final = json.loads(out)
        assert final["status"] == "succeeded" and final["resumes"] == 0, final
        assert git(demo_repo, "show", f"hal/{task_id}:late.txt") == "late"
    finally:
        assert hal("serve", "--stop").returncode == 0
    assert_no_leftovers(final)


# Counts its runs, then leaves a file whose `git add` (a clean filter the agent configured
# in its checkout, which collection honours inside the sandbox) waits for the test's `go`
# (in .git: a file that appeared in the checkout mid-collection would be work left out).
# The first collection's filter also leaves `HEAD.lock`, as a `git commit` killed mid-way.
STALLED_COLLECTION = """\
echo run >> runs.log
git config filter.wait.clean '[ -e .git/once ] || touch .git/once .git/HEAD.lock; \
  i=0; while [ ! -e .git/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; cat'
mkdir -p .git/info && echo 'result.txt filter=wait' >> .git/info/attributes
echo done > result.txt
"""


def wait_for_stalled_collection(task: dict[str, object]) -> None:
    """Until the collection's clean filter has run once: it left ``HEAD.lock`` and holds
    ``git add``. The status says ``collecting`` before the collection's command starts (and
    its filter runs inside it tens of ms later, more on a busy host), so a kill at the status
    alone can land first: the next collection's filter is then the first, leaves the lock
    itself, after the resume dropped the stale ones, and that collection's commit fails on
    it (the two-worker CI run of). The kill must interrupt the collection that
    left the lock."""
    git_dir = Path(str(task["session_dir"]), "workspace", ".git")
    # `touch` makes `once` first, then the lock.
    wait_until(lambda: (git_dir / "HEAD.lock").exists(), "the collection's clean filter", 30)
    assert (git_dir / "once").exists()


def test_a_daemon_killed_while_collecting_collects_again_after_restart(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The agent's work is done when collection starts: a daemon killed then must not leave
    # the task interrupted, for a resume that would run the agent (and pay for it) again.
    home = Path(hal_env["HAL_HOME"])
    assert hal("serve", "--detach").returncode == 0
    try:
        run = hal("run", "--detach", "--agent", "sh {{prompt_file}}", STALLED_COLLECTION)
        assert run.returncode == 0, run.stderr
        task_id = run.stdout.strip()
        task = wait_for_status(hal, "collecting")
        wait_for_stalled_collection(task)
        pid = json.loads((home / "run" / "serve.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), "the daemon to die")

        assert hal("serve", "--detach").returncode == 0
        Path(str(task["session_dir"]), "workspace", ".git", "go").touch()
        wait_until(lambda: tasks_now(hal)[0]["status"] != "collecting", "the adoption", 60)
        final = wait_for_status(hal, "succeeded", timeout=60)
    finally:
        assert hal("serve", "--stop").returncode == 0
    assert git(demo_repo, "show", f"hal/{task_id}:result.txt") == "done"
    assert git(demo_repo, "show", f"hal/{task_id}:runs.log") == "run", "the agent ran once"
    out = hal("task", "events", task_id, "--json")
    phases = [json.loads(line) for line in out.stdout.splitlines()]
    moves = [(e["previous"], e["phase"]) for e in phases if e["type"] == "phase"]
    assert moves[-4:] == [
        ("collecting", "interrupted"),
        ("interrupted", "running"),
        ("running", "collecting"),
        ("collecting", "succeeded"),
    ], moves
    assert_no_leftovers(final)


def test_a_run_killed_while_collecting_is_collected_by_its_resume(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The dead runner's collection was killed mid-way (a bwrap command dies with its hal; in
    # a keeper or a container it would live on, holding the index lock, and the resume's
    # stop ends it): the resume drops its locks and collects alone, without running the
    # agent again.
    alone = {**hal_env, "HAL_NO_DAEMON": "1"}
    runner = start_hal(alone, demo_repo, "run", "--agent", "sh {{prompt_file}}",
                       STALLED_COLLECTION)  # fmt: skip
    task = wait_for_status(hal, "collecting")
    wait_for_stalled_collection(task)
    runner.kill()
    runner.communicate()
    task_id = str(task["id"])
    resumer = start_hal(alone, demo_repo, "task", "resume", task_id, "--json")
    wait_until(lambda: tasks_now(hal)[0]["runner_pid"] == resumer.pid, "the resume's claim")
    Path(str(task["session_dir"]), "workspace", ".git", "go").touch()
    out, err = resumer.communicate(timeout=90)
    final = json.loads(out)
    assert resumer.returncode == 0 and final["status"] == "succeeded", (
        final["status"],
        final["error_message"],
        err,
    )
    assert git(demo_repo, "show", f"hal/{task_id}:result.txt") == "done"
    assert git(demo_repo, "show", f"hal/{task_id}:runs.log") == "run", "the agent ran once"
    assert_no_leftovers(final)
