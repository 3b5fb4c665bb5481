"""The session clone's host git processes: clone and branch, nothing more; the
source's path is still gone from the checkout, and git still does what the fast path does
not recognise. Counted, not timed."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from tests.support.bringback import World, _snapshot_repo
from tests.tasks.conftest import BRANCH, git

from hal9999.errors import RepoError
from hal9999.tasks import gitdir, gitrepo, mirror


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
    # The objects its refs reach, the rest of what the clone copied to leave out
    # (two, the source's refs aside and what only they reach).
    assert git_calls == ["clone", "rev-list"]
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
    assert gitdir.forget_origin_url(config.parent) is False
    assert config.read_text() == twice
    continued = '[remote "origin"]\n\turl = /a\\\n/b\n'
    config.write_text(continued)
    assert gitdir.forget_origin_url(config.parent) is False
    assert config.read_text() == continued


async def test_a_clone_at_a_ref_branches_from_that_commit(
    tmp_path: Path, git_calls: list[str]
) -> None:
    w = World(tmp_path)
    first = git(w.source, "rev-list", "--max-parents=0", "HEAD")
    src = gitrepo.RepoSource("local", str(w.source))
    base = await gitrepo.clone(src, first, w.session.workspace, BRANCH)
    # The detach; the branch in Python; one for the objects the refs reach.
    assert git_calls == ["clone", "rev-parse", "checkout", "rev-list"]
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
    assert git_calls == ["clone", "checkout"] + ["rev-list"] * (not refused)
    if not refused:
        assert git(w.session.workspace, "symbolic-ref", "HEAD") == f"refs/heads/{branch}"


def test_a_ref_in_the_way_is_left_to_git(tmp_path: Path) -> None:
    git_dir = tmp_path / ".git"
    (git_dir / "refs" / "heads").mkdir(parents=True)
    commit = "a" * 40
    (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
    (git_dir / "refs" / "heads" / "main").write_text(f"{commit}\n")
    (git_dir / "refs" / "heads" / "hal").write_text(f"{commit}\n")  # a branch `hal`
    assert gitdir.new_branch(git_dir, "hal/x") is False
    (git_dir / "refs" / "heads" / "hal").unlink()
    (git_dir / "packed-refs").write_text(f"{commit} refs/heads/hal\n")
    assert gitdir.new_branch(git_dir, "hal/x") is False
    assert (git_dir / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert sorted(p.name for p in (git_dir / "refs" / "heads").iterdir()) == ["main"]


# -- a checkout that borrows a snapshot: its .git written by hal, one `read-tree` ----------


def _what_matters(workspace: Path) -> dict[str, object]:
    """Everything of a checkout an agent or hal relies on."""
    dot = workspace / ".git"
    here = ["-c", f"safe.directory={workspace}"]

    def g(*args: str) -> str:
        return git(workspace, *here, *args)

    files = sorted(
        str(p.relative_to(workspace))
        for p in workspace.rglob("*")
        if ".git" not in p.relative_to(workspace).parts
    )
    return {
        "refs": g("for-each-ref", "--format=%(objectname) %(objecttype) %(refname) %(symref)"),
        "HEAD": (dot / "HEAD").read_text(),
        "config": g("config", "--local", "--list"),
        "index": g("ls-files", "-s"),
        "status": g("status", "--porcelain", "--ignored"),
        "files": files,
        "modes": [oct(os.lstat(workspace / f).st_mode) for f in files],
        "alternates": (dot / "objects" / "info" / "alternates").read_text(),
        "objects": sorted(
            str(p.relative_to(dot)) for p in (dot / "objects").rglob("*") if p.is_file()
        ),
        "reflogs": (dot / "logs").exists(),
        "exclude": (dot / "info" / "exclude").exists(),
    }


@pytest.mark.parametrize("detached", [False, True], ids=["on-a-branch", "detached"])
@pytest.mark.parametrize("ref", [None, "side", "v2", "feat/x"])
async def test_a_borrowed_checkout_is_what_clone_shared_made_with_one_git(
    tmp_path: Path,
    git_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
    detached: bool,
    ref: str | None,
) -> None:
    source, snap = _snapshot_repo(tmp_path, detached=detached)
    src = gitrepo.RepoSource("local", str(source))
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    base = await gitrepo.clone(src, ref, mine, BRANCH, borrow=snap)
    mine_calls = list(git_calls)
    git_calls.clear()
    with monkeypatch.context() as patch:
        patch.setattr(gitdir, "_write_git_dir", lambda *a: (False, None))
        assert await gitrepo.clone(src, ref, theirs, BRANCH, borrow=snap) == base
    # One clone (not sh and git-upload-pack besides), no rev-parse or checkout --detach
    # of its own; a ref is looked up as git does (itself, then origin/REF).
    lookups = git_calls.count("rev-parse")
    assert git_calls == ["clone"] + ["rev-parse"] * lookups + ["checkout"] * (ref is not None)
    assert mine_calls == ["rev-parse"] * lookups + ["read-tree"]
    want = _what_matters(theirs)
    got = _what_matters(mine)
    assert got == want
    assert git(mine, "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"
    assert got["objects"] == ["objects/info/alternates"]  # everything borrowed


@pytest.mark.parametrize(
    "shape", ["loose-ref", "no-packed-refs", "unborn-head", "other-ref", "sha256-like"]
)
async def test_a_snapshot_not_in_hals_form_is_cloned_by_git(
    tmp_path: Path, git_calls: list[str], shape: str
) -> None:
    source, snap = _snapshot_repo(tmp_path)
    if shape == "loose-ref":
        git(snap, "update-ref", "refs/heads/loose", "HEAD")
    elif shape == "no-packed-refs":
        (snap / "packed-refs").unlink()
        git(snap, "update-ref", "refs/heads/main", git(source, "rev-parse", "main"))
    elif shape == "unborn-head":
        (snap / "HEAD").write_text("ref: refs/heads/nothing\n")
    elif shape == "other-ref":
        with (snap / "packed-refs").open("a") as file:
            file.write(f"{git(source, 'rev-parse', 'main')} refs/notes/commits\n")
    else:
        with (snap / "packed-refs").open("a") as file:
            file.write(f"{'a' * 64} refs/tags/zz\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    src = gitrepo.RepoSource("local", str(source))
    with contextlib.suppress(RepoError):  # git's own error for what it refuses
        await gitrepo.clone(src, None, dest, BRANCH, borrow=snap)
    assert git_calls[0] == "clone"


async def test_a_borrowed_checkout_of_an_odd_branch_name_lets_git_make_the_branch(
    tmp_path: Path, git_calls: list[str]
) -> None:
    source, snap = _snapshot_repo(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    src = gitrepo.RepoSource("local", str(source))
    await gitrepo.clone(src, None, dest, "hal/x.y", borrow=snap)
    assert git_calls == ["checkout", "read-tree"]
    assert git(dest, "symbolic-ref", "HEAD") == "refs/heads/hal/x.y"
    assert git(dest, "status", "--porcelain") == ""


# -- finding the source's top level without git --------------------------------------------


async def test_a_plain_repository_is_found_without_git_as_git_finds_it(
    tmp_path: Path, git_calls: list[str]
) -> None:
    w = World(tmp_path)
    (w.source / "sub" / "deeper").mkdir(parents=True)
    inner = w.source / "sub" / "inner"
    inner.mkdir()
    git(inner, "init", "-q")
    for where in (w.source, w.source / "sub" / "deeper", inner):
        found = await gitrepo.resolve_source(None, where)
        assert found == gitrepo.RepoSource("local", git(where, "rev-parse", "--show-toplevel"))
        found = await gitrepo.resolve_source(str(where), tmp_path)
        assert found.location == git(where, "rev-parse", "--show-toplevel")
    assert git_calls == []  # no `rev-parse --show-toplevel` each


async def test_anything_but_the_plain_layout_is_left_to_git(
    tmp_path: Path, git_calls: list[str]
) -> None:
    w = World(tmp_path)
    linked = tmp_path / "linked"
    git(w.source, "worktree", "add", "-q", str(linked), "-b", "other")
    assert (await gitrepo.resolve_source(None, linked)).location == str(linked)
    odd = tmp_path / "odd"
    odd.mkdir()
    git(odd, "init", "-q")
    # Written into the file, never by `git config`: an exported GIT_DIR (a test run from
    # `git rebase -x`, a hook) would make git write the enclosing repository's config.
    with (odd / ".git" / "config").open("a") as file:
        file.write(f"[core]\n\tworktree = {w.source}\n")
    assert (await gitrepo.resolve_source(None, odd)).location == str(w.source)
    declared = tmp_path / "declared"
    declared.mkdir()
    git(declared, "init", "-q")
    with (declared / ".git" / "config").open("a") as file:
        file.write("[core]\n\tbare = true\n")
    with pytest.raises(RepoError):
        await gitrepo.resolve_source(None, declared)
    for config in ("[core]\n\tbare = true\n", "[core]\n\tbare\n", "[include]\n\tpath = x\n"):
        assert gitdir._CONFIG_ASIDE.search(config), config
    assert not gitdir._CONFIG_ASIDE.search("[core]\n\tbare = false\n\tlogallrefupdates = true\n")
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    with pytest.raises(RepoError, match="bare repository"):
        await gitrepo.resolve_source(None, bare)
    with pytest.raises(RepoError):
        await gitrepo.resolve_source(None, w.source / ".git")
    assert git_calls.count("rev-parse") >= 5


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository away")
async def test_a_repository_of_another_user_is_still_refused_by_git(
    tmp_path: Path, git_calls: list[str]
) -> None:
    w = World(tmp_path)
    os.chown(w.source, 12345, 12345)
    with pytest.raises(RepoError, match=f"^{w.source} is another user.s repository"):
        await gitrepo.resolve_source(None, w.source)
    assert "rev-parse" in git_calls


@pytest.mark.parametrize(
    "config",
    [
        "[core] worktree = {elsewhere}\n",  # a key on its section's line
        "[core]worktree={elsewhere}\n",
        "[extensions]\n\tworktreeConfig = true\n",  # config.worktree may say core.worktree
    ],
)
async def test_a_worktree_set_in_any_form_git_reads_is_left_to_git(
    tmp_path: Path, config: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    with (repo / ".git" / "config").open("a") as file:
        file.write(config.format(elsewhere=elsewhere))
    if "worktreeConfig" in config:
        # Written into the files, never by `git config` (see above).
        with (repo / ".git" / "config").open("a") as file:
            file.write("[core]\n\trepositoryformatversion = 1\n")
        (repo / ".git" / "config.worktree").write_text(f"[core]\n\tworktree = {elsewhere}\n")
    assert git(repo, "rev-parse", "--show-toplevel") == str(elsewhere)  # as git reads it
    assert gitdir.plain_top(repo) is None


@pytest.mark.parametrize("ref", [None, "side"])
async def test_a_borrowed_checkout_names_the_sessions_link_from_its_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str | None
) -> None:
    # The alternates file written with the snapshot's path, then replaced by
    # one naming the session's link, and HEAD replaced (through HEAD.lock) once or twice
    # more, would be a new inode and a freed one each, per task.
    written: list[int] = []
    write_git_dir = gitdir._write_git_dir

    def noted(*args: Any) -> tuple[bool, str | None]:
        made = write_git_dir(*args)
        written.append(os.lstat(args[1] / ".git" / "HEAD").st_ino)
        return made

    monkeypatch.setattr(gitdir, "_write_git_dir", noted)
    source, _ = _snapshot_repo(tmp_path)
    session = tmp_path / "session"
    (session / "workspace").mkdir(parents=True)
    snap = await mirror.snapshot_for(tmp_path / "home", str(source), session, None)
    assert snap is not None
    src = gitrepo.RepoSource("local", str(source))
    workspace = session / "workspace"
    await gitrepo.clone(src, ref, workspace, BRANCH, borrow=snap, alternates=mirror.ALTERNATES)
    assert written == [os.lstat(workspace / ".git" / "HEAD").st_ino]
    alternates = workspace / ".git" / "objects" / "info" / "alternates"
    before = os.lstat(alternates).st_ino
    mirror.point_alternates(workspace)
    assert os.lstat(alternates).st_ino == before
    assert alternates.read_text() == mirror.ALTERNATES
    assert git(workspace, "-c", f"safe.directory={workspace}", "status", "--porcelain") == ""
    assert (workspace / "a.txt").read_text() == ("one\n" if ref else "two\n")
    assert git(workspace, "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"
