"""The session clone's host git processes (issue 16): clone and branch, nothing more; the
source's path is still gone from the checkout, and git still does what the fast path does
not recognise. Counted, not timed."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.tasks.test_bringback import BRANCH, World, git

from hal9999.errors import RepoError
from hal9999.tasks import gitrepo


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = gitrepo.git

    async def counted(args: Sequence[str], **kwargs: Any) -> str:
        calls.append(next(a for a in args if a != "-c" and "=" not in a))
        return await original(args, **kwargs)

    monkeypatch.setattr(gitrepo, "git", counted)
    return calls


def _no_source_path(w: World) -> None:
    for path in (w.session.workspace / ".git").rglob("*"):
        if path.is_file() and "objects" not in path.parts:
            assert str(w.source) not in path.read_text(errors="replace"), path


async def test_a_local_clone_runs_git_once_and_keeps_no_host_path(
    tmp_path: Path, git_calls: list[str]
) -> None:
    w = World(tmp_path)
    src = gitrepo.RepoSource("local", str(w.source))
    base = await gitrepo.clone(src, None, w.session.workspace, BRANCH)
    # Was: + checkout -b (fourth pass), config --unset-all, rev-parse HEAD (third pass).
    assert git_calls == ["clone"]
    assert git(w.session.workspace, "status", "--porcelain") == ""
    assert base == w.base == git(w.session.workspace, "rev-parse", "HEAD")
    _no_source_path(w)
    assert git(w.session.workspace, "config", "--get-all", "remote.origin.fetch")  # kept
    assert git(w.session.workspace, "branch", "--show-current") == BRANCH


def test_a_config_not_in_gits_plain_form_is_left_to_git(tmp_path: Path) -> None:
    config = tmp_path / "gitdir" / "config"
    config.parent.mkdir()
    twice = '[remote "origin"]\n\turl = /a\n\turl = /b\n'
    config.write_text(twice)
    assert gitrepo._forget_origin_url(config.parent) is False
    assert config.read_text() == twice
    continued = '[remote "origin"]\n\turl = /a\\\n/b\n'
    config.write_text(continued)
    assert gitrepo._forget_origin_url(config.parent) is False
    assert config.read_text() == continued


async def test_a_clone_at_a_ref_branches_from_that_commit(
    tmp_path: Path, git_calls: list[str]
) -> None:
    w = World(tmp_path)
    first = git(w.source, "rev-list", "--max-parents=0", "HEAD")
    src = gitrepo.RepoSource("local", str(w.source))
    base = await gitrepo.clone(src, first, w.session.workspace, BRANCH)
    assert git_calls == ["clone", "rev-parse", "checkout"]  # the detach; the branch in Python
    assert base == first == git(w.session.workspace, "rev-parse", f"refs/heads/{BRANCH}")
    assert git(w.session.workspace, "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"


@pytest.mark.parametrize("branch", ["<default>", "hal/x.y", "odd name", "a//b"])
async def test_a_branch_not_in_the_plain_form_is_left_to_git(
    tmp_path: Path, git_calls: list[str], branch: str
) -> None:
    w = World(tmp_path)
    if branch == "<default>":  # exists already: git's own refusal
        branch = git(w.source, "branch", "--show-current")
    src = gitrepo.RepoSource("local", str(w.source))
    refused = branch != "hal/x.y"
    with pytest.raises(RepoError) if refused else contextlib.nullcontext():
        await gitrepo.clone(src, None, w.session.workspace, branch)
    assert git_calls == ["clone", "checkout"]
    if not refused:
        assert git(w.session.workspace, "symbolic-ref", "HEAD") == f"refs/heads/{branch}"


def test_a_ref_in_the_way_is_left_to_git(tmp_path: Path) -> None:
    git_dir = tmp_path / ".git"
    (git_dir / "refs" / "heads").mkdir(parents=True)
    commit = "a" * 40
    (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
    (git_dir / "refs" / "heads" / "main").write_text(f"{commit}\n")
    (git_dir / "refs" / "heads" / "hal").write_text(f"{commit}\n")  # a branch `hal`
    assert gitrepo._new_branch(git_dir, "hal/x") is False
    (git_dir / "refs" / "heads" / "hal").unlink()
    (git_dir / "packed-refs").write_text(f"{commit} refs/heads/hal\n")
    assert gitrepo._new_branch(git_dir, "hal/x") is False
    assert (git_dir / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert sorted(p.name for p in (git_dir / "refs" / "heads").iterdir()) == ["main"]
