"""What an agent leaves in its session against the host's removal of it (`hal task rm`),
end to end on bwrap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hal import Hal, env_of, git

from hal9999.providers.host import scratch

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

DEPTH = 1100
"""Levels of the agent's tree: past the 1,024 open files a process gets by default."""
DIG = f"""import os
os.mkdir("deep"); os.chdir("deep")
for _ in range({DEPTH}):
    os.mkdir("d"); os.chdir("d")
open("leaf", "w").write("x")
"""


def test_a_tree_deeper_than_hals_open_files_is_removed_with_its_session(
    hal: Hal, demo_repo: Path
) -> None:
    """The removal held a descriptor a level, so a session holding an agent's 1,100-level
    tree could never be removed by `hal task rm` under the default limit of 1,024 open
    files ("Too many open files", the task kept): here hal runs with 512."""
    (demo_repo / "dig.py").write_text(DIG)
    git(demo_repo, "add", "dig.py")
    git(demo_repo, "commit", "-qm", "add dig.py")
    out = hal("run", "--provider", "bwrap", "--agent", "python3 dig.py", "go", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    task = json.loads(out.stdout)
    session = Path(task["session_dir"])
    try:
        assert (session / "workspace" / "deep" / "d").is_dir()
        env = env_of(hal)
        assert env is not None
        argv = ["prlimit", "--nofile=512", sys.executable, "-m", "hal9999", "task", "rm"]
        rm = subprocess.run([*argv, task["id"]], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
        assert rm.returncode == 0, rm.stderr
        assert not session.exists()
        assert hal("task", "show", task["id"]).returncode != 0
    finally:  # never left for pytest's clean-up, which recurses
        if session.exists():
            scratch.remove_tree(session)
