"""A borrowed checkout's git dir written by hal: only the inodes git needs, each file
written once and none read back, the same git dir `git branch` makes, and git itself wherever
the fast path does not recognise the layout. Counted, not timed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from tests import inodes
from tests.support.bringback import _snapshot_repo
from tests.tasks.conftest import BRANCH, git

from hal9999.tasks import gitdir, gitrepo, mirror


async def test_a_written_git_dir_makes_only_the_inodes_git_needs(tmp_path: Path) -> None:
    # Each inode is dear on some hosts; no empty hooks/, objects/pack/,
    # refs/heads/ or refs/tags/ (git makes each when it first writes there), and the local
    # branch and the task's new one packed (no loose ref, no directory for a name's parts).
    _, snap = _snapshot_repo(tmp_path, detached=False)
    dest = tmp_path / "mine"
    dest.mkdir()
    with inodes.created(dest) as made:
        assert gitdir.write_git_dir(snap, dest)
        assert gitdir.new_branch(dest / ".git", "hal/x1", pack=True)
    dot = [p.removeprefix(".git/") for p in made if p != ".git"]
    assert sorted(dot) == sorted(
        ["objects", "objects/info", "objects/info/alternates", "refs", "refs/remotes",
         "refs/remotes/origin", "refs/remotes/origin/HEAD", "info", "info/exclude",
         "packed-refs", "config", "HEAD"]
    )  # fmt: skip
    here = ["-c", f"safe.directory={dest}"]
    main = git(dest, *here, "rev-parse", "refs/heads/main")
    assert git(dest, *here, "symbolic-ref", "HEAD") == "refs/heads/hal/x1"
    assert git(dest, *here, "rev-parse", "HEAD") == main
    assert gitdir.drop_reflogs(dest / ".git", "hal/x1") == main
    # Taken: the branch itself, a ref on its path, one below its name.
    for taken in ("hal/x1", "hal", "hal/x1/y"):
        assert not gitdir.new_branch(dest / ".git", taken, pack=True)
    assert git(dest, *here, "symbolic-ref", "HEAD") == "refs/heads/hal/x1"
    git(dest, *here, "read-tree", "-u", "--reset", "HEAD")
    git(dest, *here, "tag", "-a", "-m", "t", "nested/t1")
    git(dest, *here, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "c",
        "--allow-empty")  # fmt: skip
    assert git(dest, *here, "rev-parse", "HEAD~1") == main
    assert "refs/tags/nested/t1" in git(dest, *here, "for-each-ref", "refs/tags")
    assert git(dest, *here, "for-each-ref", "--format=%(refname)", "refs/heads").split() == [
        "refs/heads/hal/x1", "refs/heads/main"
    ]  # fmt: skip
    git(dest, *here, "gc", "--quiet")  # a pack, in the objects/pack/ git makes for it
    assert list((dest / ".git" / "objects" / "pack").glob("*.pack"))
    assert git(dest, *here, "fsck", "--no-progress") == ""


@pytest.mark.parametrize("ref", [None, "side"])
async def test_a_borrowed_checkout_at_head_takes_one_thread_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, git_calls: list[str], ref: str | None
) -> None:
    # Each thread hop costs the daemon CPU with 16 tasks at once; the
    # .git, the branch and its commit were three (a --ref still reads the ref with git).
    hops: list[str] = []
    to_thread = asyncio.to_thread

    async def counted(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(func.__name__)
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(gitrepo.asyncio, "to_thread", counted)
    source, _ = _snapshot_repo(tmp_path)
    session = tmp_path / "session"
    (session / "workspace").mkdir(parents=True)
    snap = await mirror.snapshot_for(tmp_path / "home", str(source), session, None)
    assert snap is not None
    hops.clear()
    git_calls.clear()  # the snapshot's own
    src = gitrepo.RepoSource("local", str(source))
    workspace = session / "workspace"
    base = await gitrepo.clone(
        src, ref, workspace, BRANCH, borrow=snap, alternates=mirror.ALTERNATES
    )
    if ref is None:
        assert hops == ["write_branched_git_dir"]
        assert git_calls == ["read-tree"]
    else:
        assert hops == ["write_git_dir", "rewrite_head", "new_branch", "drop_reflogs"]
    here = ["-c", f"safe.directory={workspace}"]
    assert git(workspace, *here, "rev-parse", "HEAD") == base
    assert git(workspace, *here, "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"
    assert git(workspace, *here, "status", "--porcelain") == ""
    assert not (workspace / ".git" / "logs").exists()
    assert (workspace / "a.txt").read_text() == ("one\n" if ref else "two\n")


def test_the_branched_git_dir_falls_back_step_by_step(tmp_path: Path) -> None:
    # Not the snapshot's form: nothing written, git clones. A branch name this path does not
    # write: the .git is written and git makes the branch.
    _, snap = _snapshot_repo(tmp_path, detached=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    assert gitdir.write_branched_git_dir(snap, busy, None, "hal/x1") == (False, False, None)
    assert os.listdir(busy) == ["x"]
    dest = tmp_path / "dest"
    dest.mkdir()
    assert gitdir.write_branched_git_dir(snap, dest, None, "hal/x..y") == (True, False, None)
    assert git(dest, "-c", f"safe.directory={dest}", "symbolic-ref", "HEAD") == "refs/heads/main"


def test_a_branched_git_dir_writes_each_file_once_and_reads_none_back(tmp_path: Path) -> None:
    # The branch's step read back the packed-refs and HEAD just written and
    # rewrote them, and the commit's step read them (and tried a loose ref) again: ten opens
    # of the .git's files a task where six are writes.
    _, snap = _snapshot_repo(tmp_path, detached=False)
    dest = tmp_path / "dest"
    dest.mkdir()
    with inodes.opened(dest) as opened:
        written = gitdir.write_branched_git_dir(snap, dest, None, "hal/x1")
    main = git(dest, "-c", f"safe.directory={dest}", "rev-parse", "refs/heads/main")
    assert written == (True, True, main)
    assert sorted(opened) == sorted(
        f".git/{name}" for name in ("objects/info/alternates", "info/exclude", "packed-refs",
                                    "refs/remotes/origin/HEAD", "config", "HEAD")
    )  # fmt: skip


@pytest.mark.parametrize("detached", [False, True])
def test_a_branched_git_dir_is_the_one_new_branch_makes(tmp_path: Path, detached: bool) -> None:
    # The branch written with the .git in one go: byte for byte what write_git_dir and then
    # new_branch(pack=True) write, for names sorted first, last, between refs, and taken.
    _, snap = _snapshot_repo(tmp_path, detached=detached)
    for n, branch in enumerate(("hal/x1", "a", "zz/top", "main", "side", "feat", "feat/x/y")):
        together, apart = tmp_path / f"together{n}", tmp_path / f"apart{n}"
        together.mkdir()
        apart.mkdir()
        written, branched, commit = gitdir.write_branched_git_dir(snap, together, None, branch)
        assert gitdir.write_git_dir(snap, apart)
        made = gitdir.new_branch(apart / ".git", branch, pack=True)
        assert (written, branched) == (True, made)
        assert commit == (gitdir.drop_reflogs(apart / ".git", branch) if made else None)
        files = sorted(p.relative_to(together) for p in together.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(apart) for p in apart.rglob("*") if p.is_file())
        for name in files:
            assert (together / name).read_bytes() == (apart / name).read_bytes(), (branch, name)
