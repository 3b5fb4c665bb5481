"""What a careless or hurried user does to hal (a home behind a symlink, ...) ends in the
task's work or in one clear line and the documented status, never a failure hal made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.conftest import Hal, git


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_hal_home_behind_a_symlink_runs_tasks(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    # HAL_HOME=~/hal, a link to a bigger disk: git saw the workspace by its real path, not
    # the one hal made it safe under, and every task as root failed "dubious ownership".
    real = tmp_path / "real-home"
    real.mkdir()
    link = tmp_path / "home-link"
    link.symlink_to(real)
    out = hal("run", "--json", "--agent", "sh agent.sh {{prompt_file}}", "fix it",
              env={"HAL_HOME": str(link)})  # fmt: skip
    task = json.loads(out.stdout)
    assert (out.returncode, task["status"]) == (0, "succeeded"), task["error_message"]
    assert "a + b" in git(demo_repo, "show", f"hal/{task['id']}:calc.py")
