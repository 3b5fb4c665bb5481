"""An in-process ``hal`` that finds its task run by another live hal process says so in one
line and leaves the task alone (``hal9999.tasks.claim``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.hal import Hal, start_hal, tasks_json
from tests.support.tasks import make_task

from hal9999.store import Store

# `hal ARGS...` in which a daemon's dispatch takes the task from the queue at the moment
# `hal task resume` has queued it again, before its run starts (the race the claim closes).
RESUME_RACE = r"""
import sys
from hal9999.tasks.service import TaskService

other = int(sys.argv[1])
queue_again = TaskService.prepare_resume

def then_taken(self, task_id, *args):
    queued = queue_again(self, task_id, *args)
    return self.store.update_task(queued.id, runner_pid=other)

TaskService.prepare_resume = then_taken
sys.argv = ["hal", *sys.argv[2:]]
from hal9999.cli.entry import main
main()
"""


@pytest.fixture
def other() -> Iterator[subprocess.Popen[bytes]]:
    """A live process ``runner_alive`` takes for a hal process: the other runner."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "hal-other"])
    yield proc
    proc.kill()
    proc.wait()


def held_task(home: Path, status: str, **fields: object) -> Store:
    """A store in ``home`` holding task ``heldaaaa``."""
    store = Store.open(home)
    store.insert_task(make_task(home, "heldaaaa", status, **fields))
    return store


def message_of(done: subprocess.CompletedProcess[str], pid: int) -> None:
    assert done.returncode == 9, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"hal: error: task heldaaaa is being run by another hal process (pid {pid}) (follow"
        " it with `hal task logs -f heldaaaa` or `hal task attach heldaaaa`)"
    )
    assert "Traceback" not in done.stderr


def test_a_resume_that_loses_its_task_to_another_hal_says_so(
    hal: Hal, hal_env: dict[str, str], other: subprocess.Popen[bytes]
) -> None:
    home = Path(hal_env["HAL_HOME"])
    store = held_task(home, "stopped", finished_at=1.0)
    done = subprocess.run(
        [sys.executable, "-c", RESUME_RACE, str(other.pid), "task", "resume", "heldaaaa"],
        env=hal_env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    message_of(done, other.pid)
    task = store.get_task("heldaaaa")
    # Queued by the resume, then the other's: this process ran and wrote nothing after.
    assert (task.status, task.runner_pid, task.resumes) == ("queued", other.pid, 1)
    assert task.sandbox_id is None and task.started_at is None
    store.close()


def test_a_detached_runner_whose_task_another_hal_runs_leaves_it_alone(
    hal: Hal, hal_env: dict[str, str], other: subprocess.Popen[bytes]
) -> None:
    home = Path(hal_env["HAL_HOME"])
    store = held_task(home, "queued", runner_pid=other.pid)
    before = store.get_task("heldaaaa")
    done = hal("task", "_run", "heldaaaa")
    message_of(done, other.pid)
    assert store.get_task("heldaaaa") == before
    store.close()


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_retry_whose_hal_run_was_killed_waits_queued_and_resumes_here(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    """`hal run --retries 1` killed while it waits out the retry's backoff leaves the task
    queued for a runner, not interrupted (which kept the next `hal serve` from it); `hal
    task show` says who can start it and `hal task resume` runs it here."""
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[scheduler]\nbackoff_base_s = 600\nbackoff_max_s = 600\n")
    agent = "sh -c 'if [ -e .tried ]; then echo fixed > fixed.txt; else touch .tried; exit 3; fi'"
    proc = start_hal(hal_env, demo_repo, "run", "--retries", "1", "--agent", agent, "go")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        [task] = tasks_json(hal) or [{"status": "none"}]
        if task["status"] == "queued" and task["agent_retries"] == 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the run never queued its retry: {tasks_json(hal)}")
    proc.kill()
    proc.wait()

    for _ in range(2):  # listing twice changes nothing: nothing of it runs, nothing is lost
        [listed] = tasks_json(hal)
        assert (listed["status"], listed["error_code"]) == ("queued", None), listed
    shown = hal("task", "show", task["id"])
    assert shown.returncode == 0, shown.stderr
    waiting = "waiting   no hal process holds it: `hal serve` starts it"
    assert f"{waiting}, `hal task resume {task['id']}` runs it here" in shown.stdout
    # Following it ends at once, saying why, rather than waiting for a run nobody starts.
    for what in ("logs", "events"):
        followed = hal("task", what, "-f", task["id"], timeout=20)
        assert followed.returncode == 0, followed.stderr
        assert f"hal: task {task['id']} is queued and no hal process holds it" in followed.stderr

    resumed = hal("task", "resume", task["id"], "--json", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["status"] == "succeeded" and final["files_changed"] == 2, final
    assert "fixed.txt" in Path(final["session_dir"], "result.patch").read_text()
