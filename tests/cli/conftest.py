"""Fixtures for driving the real ``hal`` command against real repositories."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import LeftNothing
from tests.hang_report import hang_report
from tests.processes import pointing_into
from tests.support.crash import IN_FLIGHT
from tests.support.daemon import UNSETTLED
from tests.support.hal import (
    AGENT,
    BUGGY_CALC,
    Hal,
    commit_repo,
    private_env,
    reap_started,
    tasks_json,
    tasks_now,
)
from tests.support.tasks import make_task

from hal9999.cli.options import TASK_STATES
from hal9999.home import DB_NAME
from hal9999.store import Store


@pytest.fixture
def demo_repo(tmp_path: Path) -> Path:
    """A git repo with a planted bug, a failing test and an agent script."""
    return commit_repo(tmp_path / "repo", {
        "calc.py": BUGGY_CALC,
        "test_calc.py":
            "import calc\n\nassert calc.add(2, 3) == 5, 'add is broken'\nprint('test ok')\n",
        "agent.sh": AGENT,
        ".gitignore": "__pycache__/\n",
    })  # fmt: skip


@pytest.fixture
def hal_env(tmp_path: Path) -> dict[str, str]:
    """Environment for hal subprocesses: a private HAL_HOME and config dir."""
    return private_env(tmp_path / "halhome", tmp_path / "xdg-config", HAL_PROVIDER="bwrap")


@pytest.fixture
def reaped(hal_env: dict[str, str], left_nothing: LeftNothing) -> None:
    """Nothing of this test's hal outlives it (``left_nothing`` for its HAL_HOME): for the
    tests that kill the daemon with -9, whose pool keepers and agents live on."""
    left_nothing(Path(hal_env["HAL_HOME"]), hal_env)


@pytest.fixture
def hal(hal_env: dict[str, str], demo_repo: Path) -> Hal:
    """Run ``hal ARGS...`` in the demo repo; returns the completed process."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hal9999", *args]
        with subprocess.Popen(
            argv,
            cwd=cwd or demo_repo,
            env={**hal_env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        ) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                # What it and its home were doing, taken before the kill.
                report = hang_report(Path(hal_env["HAL_HOME"]), proc.pid)
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(
                    f"hal {' '.join(args)} ran past {timeout} s\n--- its stderr\n{err}\n{report}"
                )
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    run.hal_env = hal_env  # type: ignore[attr-defined]  # for env_of
    return run


@pytest.fixture(autouse=True)
def _reap_background_hal() -> Iterator[None]:
    """A test that fails half-way leaves no background ``hal`` behind for the next one."""
    yield
    reap_started()


@pytest.fixture(params=["in-process", "served"])
def cli_path(request: pytest.FixtureRequest, hal: Hal) -> Iterator[str]:
    """The test's ``hal`` commands run in process, then through a real ``hal serve --detach``
    on the same home (stopped after): one body, both paths a CLI command takes."""
    if request.param == "served":
        assert hal("serve", "--detach").returncode == 0
    yield str(request.param)
    if request.param == "served":
        assert hal("serve", "--stop").returncode == 0


@pytest.fixture
def daemon(hal: Hal, hal_env: dict[str, str]) -> Iterator[Hal]:
    """A running ``hal serve --detach``; stopped (or found dead) at the end."""
    out = hal("serve", "--detach", "--json")
    assert out.returncode == 0, out.stderr
    yield hal
    home = Path(hal_env["HAL_HOME"])
    stopped = hal("serve", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    # Nothing of any task, nor any warm sandbox, may outlive the test.
    for task in tasks_json(hal):
        if task["status"] in ("running", "queued", "interrupted"):
            hal("task", "stop", task["id"])
    assert list((home / "sandboxes").glob("*/*")) == []


@pytest.fixture
def served(hal: Hal, hal_env: dict[str, str]) -> Iterator[Hal]:
    """``hal`` with a ``hal serve --detach`` running for its home; at the end, its tasks
    settled (those running, queued or being made cancelled, those collecting collected) and
    the daemon stopped, with nothing of the home left running. A daemon stopped while a
    task collects leaves it ``collecting`` and its pool keeper alive for the next daemon to
    adopt (by design): the fixture left both on the test machine."""
    assert hal("serve", "--detach").returncode == 0
    yield hal
    home = Path(hal_env["HAL_HOME"])
    cancelled: set[str] = set()
    deadline = time.monotonic() + 120
    while busy := [task for task in tasks_now(hal) if task["status"] in IN_FLIGHT]:
        assert time.monotonic() < deadline, f"tasks never settled: {busy}"
        for task in busy:
            if task["status"] != "collecting" and task["id"] not in cancelled:
                hal("task", "cancel", task["id"])
                cancelled.add(task["id"])
        time.sleep(0.2)
    assert hal("serve", "--stop").returncode == 0
    left = [task["status"] for task in tasks_json(hal) if task["status"] in UNSETTLED]
    assert left == [], "the stopped daemon left tasks in flight"
    assert pointing_into(home) == {}, "the stopped daemon left processes"


@pytest.fixture
def runner() -> Iterator[int]:
    """A live "hal" process, the runner of the store's active tasks."""
    live = subprocess.Popen(["hal-live-runner", "60"], executable="/bin/sleep")
    yield live.pid
    live.kill()
    live.wait()


@pytest.fixture
def home(tmp_path: Path, runner: int) -> Path:
    """A store with a task in every state, nulls and set fields, lists, unicode, control
    characters, a huge prompt, a non-finite cost and odd floats."""
    home = tmp_path / "home"
    (tmp_path / "here").mkdir()
    with Store.open(home) as store:
        for n, status in enumerate(TASK_STATES):
            active = status in ("provisioning", "preparing", "running", "collecting")
            store.insert_task(make_task(home, f"t{n:07d}", status, created_at=1_000.0 + n / 3,
                                        runner_pid=runner if active else None))  # fmt: skip
        store.insert_task(make_task(
            home, "full0001", "succeeded", created_at=5_000.123456789,
            prompt="é ✓ \x1b[2J 🚀\n" * 3,
            ref="main", base_commit="a" * 40, started_at=5_001.5, finished_at=5_002.0,
            exit_code=0, error_code="agent_failed", error_message="line\nline\u2028\"q\"",
            sandbox_id="sb1", runner_pid=runner, agent_session_id="s-1", timeout_s=3600.0,
            input_tokens=12,
            output_tokens=2**40, cost_usd=0.1 + 0.2, files_changed=3, env_keys=["A", "_B1"],
            resumes=2, priority=-5, providers=["bwrap", "qemu", "ünï"], retries=1,
            agent_retries=1, infra_retries=0, not_before=1e20, repo_kind="url",
            repo="https://example.invalid/r.git",
        ))  # fmt: skip
        store.insert_task(make_task(home, "huge0001", "failed", created_at=6_000.0,
                                    prompt="x" * 1_000_000, cost_usd=1e-7))  # fmt: skip
    with sqlite3.connect(home / DB_NAME) as conn:  # what only an older hal may have written
        conn.execute("UPDATE tasks SET cost_usd = ? WHERE id = 'huge0001'", (float("inf"),))
        conn.execute("UPDATE tasks SET timeout_s = 7 WHERE id = 't0000001'")
    conn.close()
    return home
