"""``hal serve`` killed (SIGKILL) while its pool creates or destroys a sandbox: the next
daemon destroys or adopts each, and nothing is left (no process, no state directory, no
pool row, no cgroup, no network namespace)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.processes import pointing_into
from tests.support.crash import assert_repo_whole, has_work, killed_daemon, settle
from tests.support.hal import Hal, git

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]

POINTS = {
    # created by the provider, no row yet: only its state directory and label tell
    "pool_created_unrecorded": {},
    # its row says leased, the task's record does not name it yet
    "pool_recorded": {},
    # the run is over; the pool destroys the sandbox (policy destroy): its row says so
    "pool_destroying": {"HAL_BWRAP_POOL_POLICY": "destroy"},
    # destroyed, its row not yet gone
    "bwrap_destroyed": {"HAL_BWRAP_POOL_POLICY": "destroy"},
}


def _cgroups_named(ids: set[str]) -> list[str]:
    found = []
    for parent in Path("/sys/fs/cgroup").glob("*/hal9999"):
        found += [str(p) for p in parent.iterdir() if p.name in ids]
    return found


def _rows(home: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(home / "hal.db")
    try:
        return conn.execute("SELECT provider, id FROM sandboxes").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("point", list(POINTS))
def test_a_daemon_killed_in_its_pools_create_or_destroy_leaks_nothing(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str, reaped: None
) -> None:
    hal_env = {**hal_env, **POINTS[point]}
    home = Path(hal_env["HAL_HOME"])
    main = git(demo_repo, "rev-parse", "main")
    task_id = killed_daemon(hal, hal_env, demo_repo, point)
    state = home / "sandboxes" / "bwrap"
    made = {p.name for p in state.iterdir()} if state.exists() else set()
    if point != "bwrap_destroyed":
        assert made, "the killed daemon left its sandbox (else this point tests nothing)"
    assert hal("serve", "--detach", env=hal_env).returncode == 0
    try:
        task = settle(hal, task_id)
        if task["status"] == "interrupted":
            resumed = hal("task", "resume", task_id, env=hal_env, timeout=90)
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
            task = settle(hal, task_id)
        assert task["status"] == "succeeded", task
        assert has_work(demo_repo, task)
    finally:
        assert hal("serve", "--stop", env=hal_env).returncode == 0
    assert_repo_whole(demo_repo, main, incoming_ok=False)
    left = sorted(p.name for p in state.iterdir()) if state.exists() else []
    assert left == [], "every sandbox swept"
    assert _rows(home) == [], "no pool row outlives its daemon's sandboxes"
    assert _cgroups_named(made) == []
    assert pointing_into(home) == {}, "no process of the home left"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(home) not in mounts, "no namespace or mount of the home's left"
