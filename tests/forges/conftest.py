"""A fake forge with one GitHub and one GitLab project, each a real bare repository (the
fixture ``forge``, also imported by tests/cli/test_run_issue.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes.forge_api import FakeForge, FakeIssue
from tests.support.hal import commit_repo


def bare_clone(source: Path, bare: Path) -> Path:
    """``source`` cloned bare to ``bare``, its branch ``main``."""
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    return bare


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[FakeForge]:
    """GitHub project ``octo/calc`` (its `#1` has five comments by two authors) and GitLab
    project ``team/tools/calc`` (its `#3` has two notes), served with their repositories."""
    source = commit_repo(tmp_path / "src", {"calc.py": "def add(a, b):\n    return a - b\n"})
    with FakeForge() as fake:
        fake.repos["octo/calc"] = bare_clone(source, tmp_path / "gh" / "calc.git")
        fake.repos["team/tools/calc"] = bare_clone(source, tmp_path / "gl" / "calc.git")
        fake.issues[("octo/calc", 1)] = FakeIssue(
            "add() subtracts",
            "calc.add(2, 3) gives -1.",
            "alice",
            [("bob", f"comment {i}") for i in range(4)] + [("alice", "still broken")],
        )
        fake.issues[("team/tools/calc", 3)] = FakeIssue(
            "add() subtracts", "see title", "carol", [("dave", "confirmed"), ("carol", "thanks")]
        )
        yield fake
