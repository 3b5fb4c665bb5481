"""Repositories users really have, as ``hal run`` meets them: one on a path that is not
UTF-8, one of another user, one whose current branch has no commit yet. Each ends in one
line naming the problem and its fix, never an internal error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tests.support.hal import Hal, git, no_sessions, one_error_line, tasks_json

AGENT = ("--agent", "true {{prompt_file}}")


def test_a_repository_on_a_path_that_is_not_utf8_is_named_not_a_crash(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    # Run from inside it, or through a link to it (argv holds no such byte; the current
    # directory and the link's target do): in process the path reached the task's record and
    # SQLite refused it, an internal error; through the daemon the request was refused as
    # holding "a lone UTF-16 surrogate".
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    shutil.copytree(demo_repo, odd, symlinks=True)
    (tmp_path / "link").symlink_to(odd)
    said = f"the repository's path is not UTF-8 text: {tmp_path}/caf\\xe9"
    assert hal("serve", "--detach").returncode == 0
    try:
        for daemon in ["0", "1"]:
            for args, cwd in [((), odd), (("--repo", "."), odd), (("--repo", "link"), tmp_path)]:
                out = hal("run", *AGENT, *args, "x", cwd=cwd, env={"HAL_NO_DAEMON": daemon})
                assert out.returncode == 4, out.stderr
                line = one_error_line(out)
                assert said in line and "rename the directories" in line, line
        assert tasks_json(hal) == [] and no_sessions(hal_env)
        for daemon in ["0", "1"]:  # an absolute --repo needs nothing of the directory
            out = hal("run", *AGENT, "--repo", str(demo_repo), "x", cwd=odd,
                      env={"HAL_NO_DAEMON": daemon})  # fmt: skip
            assert out.returncode == 0, out.stderr
    finally:
        assert hal("serve", "--stop").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="making a repository of another user needs root")
def test_a_repository_of_another_user_is_named_as_such_not_as_no_repository(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    theirs = tmp_path / "theirs"
    shutil.copytree(demo_repo, theirs, symlinks=True)
    (theirs / "src").mkdir()
    for path in [theirs, *theirs.rglob("*")]:
        os.lchown(path, 65534, 65534)
    for where in [theirs, theirs / "src"]:
        out = hal("run", *AGENT, "--repo", str(where), "x")
        assert out.returncode == 4, out.stderr
        line = one_error_line(out)
        # It said "not a git repository", which sent the user looking for a missing .git.
        assert f"{theirs} is another user's repository" in line, line
        assert f'`chown -R "$(id -un)" {theirs}`' in line and "not a git repository" not in line
    assert tasks_json(hal) == [] and no_sessions(hal_env)


def test_a_current_branch_with_no_commit_names_a_branch_that_has_them(
    hal: Hal, demo_repo: Path
) -> None:
    # `git checkout --orphan`: "has no commits yet" was untrue of the repository.
    git(demo_repo, "checkout", "-q", "--orphan", "fresh")
    out = hal("run", "--json", *AGENT, "x")
    assert out.returncode == 4, out.stderr
    task = json.loads(out.stdout)
    assert task["error_code"] == "repo_invalid"
    assert task["error_message"] == (
        f"the current branch of {demo_repo} has no commits yet (pass --ref with a branch that "
        "has them (such as 'main'), or commit on this one first)"
    )
    assert hal("run", *AGENT, "--ref", "main", "x").returncode == 0
