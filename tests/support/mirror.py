"""Repositories and ``hal`` runs for the repository-mirror tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.tasks.conftest import git


def make_repo(root: Path) -> Path:
    """A repository under ``root`` with many objects of some size, in one commit."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "README").write_text("hello\n")
    # Many objects of some size: a copy of them per task is what snapshots avoid.
    for n in range(40):
        (repo / f"data{n}.bin").write_bytes(os.urandom(8192))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo


def hal(
    tmp_path: Path, repo: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``hal ARGS`` in ``repo`` with a private home under ``tmp_path`` and no daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env |= {
        "HAL_HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "HAL_NO_DAEMON": "1",
        "HAL_PROVIDER": "bwrap",
    }
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def run(tmp_path: Path, repo: Path, script: str, *extra: str) -> tuple[dict, str]:
    """``hal run`` of ``sh -c script``; the task document and the agent's log."""
    out = hal(tmp_path, repo, "run", "--json", *extra, "--agent", f"sh -c '{script}'", "x")
    task = json.loads(out.stdout)
    log = (Path(task["session_dir"]) / "agent.log").read_text()
    return task, log


def snapshots(tmp_path: Path) -> list[str]:
    """The names of the mirrors' snapshots under ``tmp_path``'s home."""
    found = []
    for base in (tmp_path / "home" / "mirrors").iterdir():
        if base.is_dir():
            found += sorted(p.name for p in base.iterdir() if p.name.startswith("s-"))
    return found
