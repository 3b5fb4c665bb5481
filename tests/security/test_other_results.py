"""A task reads nothing of another task's result: every result lands in the
source as a pack of its own, and git's local copy of the source (the snapshot a bwrap
checkout borrows, the whole clone of a ref no snapshot holds) copied every pack and named
each result branch ``origin/hal/<id>``: a later task's agent read every earlier task's work
with ``git cat-file --batch-all-objects``, a hive agent another's branch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.support.mirror import hal, make_repo
from tests.tasks.conftest import git

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(300)]

LOOK = "git branch -a; git cat-file --batch-all-objects --batch; cat README"
"""What the agent prints: every branch it has and every object its checkout can read."""


def _run(tmp_path: Path, repo: Path, script: str, *extra: str) -> tuple[dict, str]:
    out = hal(tmp_path, repo, "run", "--json", *extra, "--agent", f"sh -c '{script}'", "x")
    task = json.loads(out.stdout)
    return task, (Path(task["session_dir"]) / "agent.log").read_text(errors="replace")


def _result(tmp_path: Path, repo: Path, marker: str) -> str:
    task, _ = _run(tmp_path, repo, f"echo {marker} > work-{marker}.txt")
    assert task["status"] == "succeeded", task
    return str(task["branch"])


def _commit(repo: Path, name: str) -> None:
    (repo / name).write_text(f"{name}\n")
    git(repo, "add", name)
    git(repo, "commit", "-qm", name)  # a new snapshot for the next task


def test_a_task_reads_no_other_tasks_result(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    first = _result(tmp_path, repo, "first-3b7d1e")
    second = _result(tmp_path, repo, "second-9c4a2f")
    _commit(repo, "one")
    # The snapshot: each result a pack of its own in the source.
    task, log = _run(tmp_path, repo, LOOK)
    assert task["status"] == "succeeded" and "hello" in log, log
    assert "first-3b7d1e" not in log and "second-9c4a2f" not in log
    assert "hal/" not in log.replace(f"hal/{task['id']}", "")
    # The source's gc packed the results with its own objects.
    subprocess.run(["git", "gc", "-q"], cwd=repo, check=True)
    _commit(repo, "two")
    task, log = _run(tmp_path, repo, LOOK)
    assert task["status"] == "succeeded" and "hello" in log and "two" in log, log
    assert "first-3b7d1e" not in log and "second-9c4a2f" not in log
    # A whole clone (a ref no snapshot holds) has the result it starts from, no other.
    task, log = _run(tmp_path, repo, LOOK, "--ref", second)
    assert task["status"] == "succeeded" and "second-9c4a2f" in log, log
    assert "first-3b7d1e" not in log
    assert first not in log and "origin/hal/" not in log, log


def test_a_task_reads_nothing_the_source_keeps_aside(tmp_path: Path) -> None:
    """What the source holds but no branch or tag reaches, once its gc packed it with the
    rest: the operator's stash and a commit dropped from a branch (still in its reflog)."""
    repo = make_repo(tmp_path)
    _commit(repo, "dropped-41c9e7")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    (repo / "README").write_text("stashed-8d02b5\n")
    git(repo, "stash", "-q")
    git(repo, "checkout", "-q", "--detach")
    _commit(repo, "detached-0f5b3c")  # a start no snapshot holds: a whole clone
    start = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    subprocess.run(["git", "gc", "-q"], cwd=repo, check=True)
    task, log = _run(tmp_path, repo, LOOK)
    assert task["status"] == "succeeded" and "hello" in log, log
    assert "dropped-41c9e7" not in log and "stashed-8d02b5" not in log
    task, log = _run(tmp_path, repo, LOOK, "--ref", start)
    assert task["status"] == "succeeded" and "detached-0f5b3c" in log, log
    assert "dropped-41c9e7" not in log and "stashed-8d02b5" not in log
