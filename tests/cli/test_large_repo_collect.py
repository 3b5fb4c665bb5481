"""Collecting a one-line change costs in proportion to the change, not to the repository:
the checkout's index is true for the sandbox's user before the agent starts, so the
collection's ``git status`` and ``add -A`` read only the files the agent changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.support.hal import Hal, events_of, git

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(600)]

# The agent first counts the checkout's files whose stat data no longer matches the index
# (`diff-files` refreshes nothing): each is one the collection would read and hash again.
AGENT = "sh -c 'echo STALE $(git diff-files --name-only | wc -l); echo changed >> d0/f0.txt'"


def _big_repo(repo: Path, files: int) -> Path:
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for n in range(files):
        folder = repo / f"d{n // 100}"
        if n % 100 == 0:
            folder.mkdir()
        (folder / f"f{n % 100}.txt").write_text(f"file {n}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"{files} files")
    return repo


def _collect_s(hal: Hal, repo: Path) -> tuple[float, str]:
    """Seconds from ``collecting`` to the collected note of a run in ``repo``; its log."""
    out = hal("run", "--provider", "bwrap", "--agent", AGENT, "go", "--json", cwd=repo, timeout=300)
    task = json.loads(out.stdout)
    assert task.get("status") == "succeeded" and task["files_changed"] == 1, out.stderr
    events = events_of(hal, task["id"])
    start = next(e["ts"] for e in events if e["type"] == "phase" and e["phase"] == "collecting")
    done = next(e["ts"] for e in events
                if e["type"] == "message" and e["text"].startswith("collected "))  # fmt: skip
    log = hal("task", "logs", task["id"]).stdout
    return done - start, log


def test_collecting_a_small_change_does_not_read_the_whole_repository(
    hal: Hal, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the checkout changes owner only for a sandbox with a uid of its own (root)")
    small_s, small_log = _collect_s(hal, _big_repo(tmp_path / "small", 2_000))
    big_s, big_log = _collect_s(hal, _big_repo(tmp_path / "big", 50_000))
    # Every file stale: the collection read all 50,000 twice (the status, then add -A).
    assert "STALE 0" in small_log and "STALE 0" in big_log, (small_log[-500:], big_log[-500:])
    # 25 times the files; a collection reading them all took well over ten times as long.
    assert big_s < 8 * small_s + 3.0, (small_s, big_s)
