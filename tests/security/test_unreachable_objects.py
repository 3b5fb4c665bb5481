"""A checkout holds no object its refs do not reach. Git's local copy of a
source (the snapshot a bwrap checkout borrows, the whole clone of a ref no snapshot holds)
copied every pack and loose object of the source: a commit with a secret the operator
dropped (its reflog expired), a dropped stash, an amended commit, a blob written and never
committed were all read in the checkout with ``git cat-file --batch-all-objects`` or ``git
fsck --lost-found``, wherever they were kept: loose, in a pack of their own, or in a pack
beside the objects the branches reach."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from tests.tasks.conftest import git, make_repo

from hal9999.tasks import gitrepo, mirror

SECRETS = ("dropped-5e1a", "stashed-77c0", "amended-0b93", "loose-a4d2", "own-pack-3f68")


def _hostile_source(tmp_path: Path) -> Path:
    """A source whose store holds, besides its branch, every kind of object nothing
    reaches, its reflogs expired; some packed with the branch's objects, the rest loose or
    in a pack of their own."""
    source = tmp_path / "source"
    make_repo(source, {"README": "hello\n"})
    (source / "key").write_text("dropped-5e1a\n")  # committed, then reset past
    git(source, "add", "key")
    git(source, "commit", "-qm", "secret")
    (source / "README").write_text("stashed-77c0\n")
    git(source, "stash", "-q")
    git(source, "repack", "-a", "-d", "-q")  # both packed with the branch's objects
    git(source, "stash", "drop", "-q")
    git(source, "reset", "-q", "--hard", "HEAD~1")
    (source / "notes").write_text("amended-0b93\n")
    git(source, "add", "notes")
    git(source, "commit", "-qm", "notes")
    (source / "notes").write_text("fine\n")
    git(source, "commit", "-q", "-a", "--amend", "-m", "notes")
    blob = tmp_path / "blob"
    blob.write_text("loose-a4d2\n")
    git(source, "hash-object", "-w", str(blob))
    git(source, "reflog", "expire", "--expire=now", "--all")
    return source


def _own_pack(tmp_path: Path, source: Path) -> None:
    """A pack of objects nothing in ``source`` reaches, put into its store."""
    other = tmp_path / "other"
    make_repo(other, {"f": "own-pack-3f68\n"})
    git(other, "repack", "-a", "-d", "-q")
    for path in (other / ".git" / "objects" / "pack").iterdir():
        (source / ".git" / "objects" / "pack" / path.name).write_bytes(path.read_bytes())


def _every_object(repo: Path) -> str:
    """Every object ``repo`` can read, as the agent prints them."""
    return subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo, check=True,
        capture_output=True,
    ).stdout.decode(errors="replace")  # fmt: skip


def _assert_only_reached(repo: Path) -> None:
    every = _every_object(repo)
    assert not [secret for secret in SECRETS if secret in every]
    _assert_exactly_reached(repo)


def _assert_exactly_reached(repo: Path) -> None:
    names = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    listed = set(names.split())
    assert listed == set(git(repo, "rev-list", "--objects", "--no-object-names", "--all").split())
    assert git(repo, "fsck", "--unreachable", "--no-reflogs", "--no-progress") == ""
    assert git(repo, "show", "HEAD:README") == "hello"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    made = tmp_path / "made"
    made.mkdir()
    source = _hostile_source(made)
    _own_pack(made, source)
    every = _every_object(source)
    assert all(secret in every for secret in SECRETS)  # the source holds each one
    return source


def test_a_snapshot_holds_only_what_its_refs_reach(tmp_path: Path, source: Path) -> None:
    base = tmp_path / "mirrors"
    base.mkdir()
    snap = asyncio.run(mirror._make(base, str(source), "fp"))
    _assert_only_reached(snap)


def test_a_whole_clone_holds_only_what_its_refs_reach(tmp_path: Path, source: Path) -> None:
    dest = tmp_path / "checkout"
    src = gitrepo.RepoSource("local", str(source))
    asyncio.run(gitrepo.clone(src, None, dest, "hal/t1"))
    _assert_only_reached(dest)


def _snapshots_across(tmp_path: Path, change: str) -> tuple[Path, Path]:
    """A snapshot of a source, then the next one after the source's refs ``change``d."""
    source = tmp_path / "source"
    make_repo(source, {"README": "hello\n"})
    (source / "key").write_text("dropped-5e1a\n")
    git(source, "add", "key")
    git(source, "commit", "-qm", "secret")
    git(source, "tag", "-a", "-m", "stashed-77c0", "v1", "HEAD~1")
    base = tmp_path / "mirrors"
    base.mkdir()
    first = asyncio.run(mirror._make(base, str(source), "fp1"))
    if change == "reset":  # the commit with the secret dropped, its reflog expired
        git(source, "reset", "-q", "--hard", "HEAD~1")
        git(source, "reflog", "expire", "--expire=now", "--all")
    elif change == "tag":  # the tag with the secret deleted
        git(source, "tag", "-d", "v1")
    (source / "more").write_text("more\n")
    git(source, "add", "more")
    git(source, "commit", "-qm", "more")
    return first, asyncio.run(mirror._make(base, str(source), "fp2"))


def test_the_next_snapshot_walks_only_what_is_new(tmp_path: Path, git_calls: list[str]) -> None:
    _first, second = _snapshots_across(tmp_path, "commit")
    listings = [call for call in git_calls if call == "rev-list"]
    assert listings == ["rev-list"] * 3  # the first's walk; the second's check and listing
    assert "dropped-5e1a" in _every_object(second)  # still on the branch
    _assert_exactly_reached(second)
    assert git(second, "show", "HEAD:more") == "more"


@pytest.mark.parametrize("change", ["reset", "tag"])
def test_what_the_last_snapshot_reached_and_this_one_does_not_goes(
    tmp_path: Path, change: str
) -> None:
    first, second = _snapshots_across(tmp_path, change)
    secret = "dropped-5e1a" if change == "reset" else "stashed-77c0"
    assert secret in _every_object(first)
    assert secret not in _every_object(second)
    _assert_exactly_reached(second)
