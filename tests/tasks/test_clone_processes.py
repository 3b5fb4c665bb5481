"""The session clone's host git processes (issue 16): clone and branch, nothing more; the
source's path is still gone from the checkout, and git still does what the fast path does
not recognise. Counted, not timed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.tasks.test_bringback import BRANCH, World, git

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


async def test_a_local_clone_runs_git_twice_and_keeps_no_host_path(
    tmp_path: Path, git_calls: list[str]
) -> None:
    w = World(tmp_path)
    src = gitrepo.RepoSource("local", str(w.source))
    base = await gitrepo.clone(src, None, w.session.workspace, BRANCH)
    assert git_calls == ["clone", "checkout"]  # was: + config --unset-all, rev-parse HEAD
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
