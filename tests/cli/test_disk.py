"""The disk limit stops a task and still brings its work back; a full disk ends a task with a
clear error, leaks no sandbox or cgroup, and leaves ``hal task list`` working."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.cli import assert_no_leftovers
from tests.support.hal import Hal, commit_repo, git, one_error_line, tasks_json

from hal9999.providers.host import cgroups

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

FILL = (
    "sh -c 'echo kept > kept.txt; i=0; while [ $i -lt 40 ]; do i=$((i+1)); "
    "head -c 500000 /dev/zero > /tmp/fill$i; done; echo filled; sleep 60'"
)


def no_cgroup_left(sandbox_ids: set[str]) -> None:
    host = cgroups.detect()
    if host is None:
        return
    for root in host.roots.values():
        parent = root / cgroups.PARENT
        left = {p.name for p in parent.iterdir()} & sandbox_ids if parent.exists() else set()
        assert left == set(), f"cgroups left behind: {left}"


def sandbox_ids(hal_home: Path) -> set[str]:
    state = hal_home / "sandboxes" / "bwrap"
    return {p.name for p in state.iterdir()} if state.exists() else set()


def test_past_its_disk_limit_a_task_stops_and_its_work_comes_back(hal: Hal) -> None:
    start = time.monotonic()
    out = hal("run", "--agent", FILL, "x", "--json", env={"HAL_DISK_MB": "10"})
    assert time.monotonic() - start < 40, "stopped by the watchdog, not by the agent's sleep"
    assert out.returncode == 10, out.stderr
    assert "Traceback" not in out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["error_code"] == "disk_limit"
    assert "disk limit of 10 MiB" in task["error_message"]
    # Work done before the stop is collected (the scratch files are not part of it).
    assert "kept.txt" in Path(task["session_dir"], "result.patch").read_text()
    assert_no_leftovers(task)


def test_the_tasks_log_and_events_count_against_its_disk_limit(hal: Hal) -> None:
    # Nothing in the workspace, home or /tmp: only what the agent prints, which lands on the
    # host as its log and output events (a hive agent's add up over its turns).
    agent = "sh -c 'yes all work and no play | head -c 30000000; sleep 60'"
    start = time.monotonic()
    out = hal("run", "--agent", agent, "x", "--json",
              env={"HAL_DISK_MB": "16", "HAL_LOG_CAP_MB": "64"})  # fmt: skip
    assert time.monotonic() - start < 50, "stopped by the watchdog, not by the agent's sleep"
    assert out.returncode == 10, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["error_code"] == "disk_limit"
    assert "with its log and events" in task["error_message"]


@pytest.fixture
def small_home(hal_env: dict[str, str]) -> Iterator[Path]:
    """HAL_HOME on a 24 MiB tmpfs (root only: it mounts one)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as HAL_HOME needs root")
    home = Path(hal_env["HAL_HOME"])
    home.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(home)], check=True)
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_full_disk_ends_the_task_cleanly(hal: Hal, small_home: Path) -> None:
    fill = "sh -c 'echo kept > kept.txt; head -c 100000000 /dev/zero > big; echo $?; sleep 1'"
    out = hal("run", "--agent", fill, "x", "--json")
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode != 0, (out.stdout, out.stderr)
    [task] = tasks_json(hal)  # the store is still readable and `hal task list` works
    assert task["status"] == "failed", (task, out.stderr)
    assert task["error_code"] in ("disk_full", "agent_failed"), (task, out.stderr)
    assert_no_leftovers(task)
    no_cgroup_left(sandbox_ids(small_home) | {task.get("sandbox_id") or ""})
    listed = hal("task", "list")
    assert listed.returncode == 0 and task["id"][:8] in listed.stdout, listed.stderr


def fill(home: Path, name: str) -> None:
    """Write zeros into ``home/name`` until the disk is full."""
    with (home / name).open("wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * (1 << 20))
            filler.flush()


def test_on_a_full_disk_task_list_works_and_a_run_says_so_in_one_line(
    hal: Hal, small_home: Path
) -> None:
    first = hal("run", "--agent", "true {{prompt_file}}", "x", "--json")
    assert first.returncode == 0, first.stderr
    assert (small_home / ".disk-reserve").exists(), "a run reserves room for a full disk"
    fill(small_home, "filler")
    # The reserve is given up, so the store opens and the list shows.
    listed = hal("task", "list")
    assert listed.returncode == 0 and "succeeded" in listed.stdout, listed.stderr
    assert not (small_home / ".disk-reserve").exists()
    fill(small_home, "filler2")
    out = hal("run", "--agent", "true {{prompt_file}}", "x")
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode != 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    # Where it fails depends on what still fits (the store may not even open: "disk I/O").
    assert len(lines) == 1 and ("is full" in lines[0] or "disk" in lines[0]), out.stderr


def test_a_store_that_cannot_open_on_a_full_disk_says_the_disk_is_full(
    hal: Hal, small_home: Path
) -> None:
    """With no run's reserve to give up, SQLite's -shm cannot grow: the line said "disk I/O
    error (check that HAL_HOME is writable and not on a network filesystem)"."""
    assert hal("task", "list").returncode == 0
    fill(small_home, "filler")
    out = hal("task", "list")
    assert out.returncode == 10, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    assert len(lines) == 1 and "the disk holding it is full" in lines[0], out.stderr
    assert "free space on the filesystem of HAL_HOME" in lines[0]
    # `task show` (and its --json) likewise: one line, no traceback.
    for args in (("task", "show", "abcd1234"), ("task", "list", "--json")):
        out = hal(*args)
        assert out.returncode == 10 and "Traceback" not in out.stdout + out.stderr, out.stderr
        assert "the disk holding it is full" in one_error_line(out), out.stderr


def serve_on_a_full_disk(hal: Hal, small_home: Path) -> str:
    """``hal serve --detach`` with ``small_home``'s disk filled (``filler``): its one error
    line, the start having failed with status 10."""
    fill(small_home, "filler")
    try:
        out = hal("serve", "--detach")
    finally:
        hal("serve", "--stop")
    assert out.returncode == 10, out.stderr
    return one_error_line(out)


def test_serve_detach_on_a_full_disk_says_the_disk_is_full(hal: Hal, small_home: Path) -> None:
    """The daemon could not write even its error to its log: the line sent the user to an
    empty serve.log ("hal serve did not start (see .../serve.log)"), with status 1."""
    assert hal("task", "list").returncode == 0
    line = serve_on_a_full_disk(hal, small_home)
    assert "hal serve did not start: the disk holding hal's home is full" in line, line
    assert "free space on the filesystem of HAL_HOME" in line, line
    (small_home / "filler").unlink()
    assert hal("task", "list").returncode == 0


def test_serve_detach_on_a_full_disk_is_not_told_an_earlier_daemons_error(
    hal: Hal, small_home: Path
) -> None:
    """serve.log is appended to: a log holding an earlier daemon's lines was "not empty", so
    a full disk (nothing of this start's fitted) was reported as that earlier line, status
    and all, sending the user after a problem long fixed."""
    assert hal("task", "list").returncode == 0
    log = small_home / "run" / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    old = b"hal: error: --listen '0.0.0.0:8443' an earlier mistake, fixed since\n"
    log.write_bytes(b"x" * (4096 - len(old) - 1) + b"\n" + old)  # its block full: no room
    line = serve_on_a_full_disk(hal, small_home)
    assert "the disk holding hal's home is full" in line, line
    assert "earlier mistake" not in line, line
    (small_home / "filler").unlink()


def test_a_disk_out_of_files_ends_the_task_cleanly(hal: Hal, hal_env: dict[str, str]) -> None:
    """An agent's empty files take no space the disk limit or the free-space guard see,
    but an inode each: it filled the disk of hal's home, and ran on."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as HAL_HOME needs root")
    home = Path(hal_env["HAL_HOME"])
    home.mkdir(parents=True)
    options = "size=256m,nr_inodes=6000"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(home)], check=True)
    try:
        many = (
            "sh -c 'echo kept > kept.txt; mkdir many; i=0; "
            "while : > many/f$i 2>/dev/null; do i=$((i+1)); done; sleep 60; echo ran-on'"
        )
        out = hal("run", "--agent", many, "x", "--json")
        assert "Traceback" not in out.stderr + out.stdout, out.stderr
        [task] = tasks_json(hal)
        assert task["status"] == "failed" and task["error_code"] == "disk_full", task
        assert "inodes" in task["error_message"], task
        log = Path(task["session_dir"], "agent.log").read_text()
        assert "ran-on" not in log, "the agent was not stopped"
        assert_no_leftovers(task)
        # With no inode left at all, a store that cannot open says why, in one line (it
        # said to check that HAL_HOME is writable and not on a network filesystem).
        with contextlib.suppress(OSError):
            for n in range(10**6):
                (home / f"filler{n}").touch()
        out = hal("task", "list")
        assert out.returncode == 10, out.stderr
        assert "the disk holding it is full" in one_error_line(out), out.stderr
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_disk_filled_by_the_clone_records_the_tasks_failure(
    hal: Hal, small_home: Path, tmp_path: Path
) -> None:
    """The watchdog gives up the reserve only while an agent runs: a disk that the clone
    filled left no room to record the end, and the task read "interrupted", its hal having
    "died" (it had printed the real error and exited)."""
    first = hal("run", "--agent", "true {{prompt_file}}", "x")
    assert first.returncode == 0, first.stderr
    assert (small_home / ".disk-reserve").exists()
    repo = commit_repo(tmp_path / "big", {"a.txt": "a\n"})
    (repo / "big.bin").write_bytes(os.urandom(12 << 20))  # its snapshot and checkout: 24 MiB
    git(repo, "add", "big.bin")
    git(repo, "commit", "-qm", "big")
    out = hal("run", "--agent", "true {{prompt_file}}", "x", cwd=repo)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    failed = next(t for t in tasks_json(hal) if t["repo"] == str(repo))
    assert failed["status"] == "failed", failed
    assert failed["error_code"] == "disk_full", failed
    assert "the disk holding hal's home is full" in failed["error_message"], failed
    assert_no_leftovers(failed)


# The agent's run writes one small file; the clean filter it sets in its checkout's config
# runs again as the agent in the collection's `git add`, which wrote for as long as it liked
# (20 s here, a megabyte at a time), past the disk limit, with no watchdog looking.
FILTERED = r"""#!/bin/sh
git config filter.fill.clean \
  'end=$(($(date +%s) + 20)); while [ $(date +%s) -lt $end ]; do
     head -c 1000000 /dev/zero > "$HOME/f$$-$(date +%s%N)"; done; cat'
echo '*.txt filter=fill' > .gitattributes
echo hi > note.txt
"""


def test_what_the_agents_filter_writes_while_collecting_meets_the_disk_limit(
    hal: Hal, demo_repo: Path
) -> None:
    (demo_repo / "filtered.sh").write_text(FILTERED)
    git(demo_repo, "add", "filtered.sh")
    git(demo_repo, "commit", "-qm", "add filtered.sh")
    out = hal("run", "--agent", "sh filtered.sh", "x", "--json", env={"HAL_DISK_MB": "10"},
              timeout=120)  # fmt: skip
    assert "Traceback" not in out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "failed" and task["error_code"] == "disk_limit", task
    assert "collect" in task["error_message"]
    # Stopped within seconds, not 20 s of writing: told by when the filter wrote its files
    # (their names), not by how much, which is the disk's speed (210 MB in CI's ~2 s).
    home = Path(task["session_dir"], "home")
    written = sorted(int(f.name.rsplit("-", 1)[1]) for f in home.glob("f*-*") if f.is_file())
    assert written, "the filter wrote nothing"
    assert (written[-1] - written[0]) / 1e9 < 10, len(written)
    assert_no_leftovers(task)
