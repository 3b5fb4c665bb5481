"""Bundles shaped to slip a tree past bring-back's ``index-pack --strict`` (attacks
that must each be held): ``.gitmodules`` a link or hostile in any spelling, a refused tree no
commit reaches, a second pack after the first, a hostile ``.gitmodules`` whose blob the
source already holds (so the bundle does not carry it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.support.bringback import World, blob, cloned_world, commit_tree, mktree
from tests.tasks.conftest import BRANCH, git

from hal9999.errors import RepoError


@pytest.fixture
async def world(tmp_path: Path) -> World:
    return await cloned_world(tmp_path)


MODULES = '[submodule "{name}"]\n\tpath = {path}\n\turl = {url}\n'


def refused(world: World) -> None:
    """Nothing of the result reached the source."""
    assert git(world.source, "for-each-ref", "refs/heads/hal/", "refs/hal-incoming/") == ""


def git_dir_tree(ws: Path) -> str:
    return mktree(ws, [("040000", mktree(ws, [("100644", blob(ws, "x"), "config")]), ".GIT")])


def pack(ws: Path, objects: list[str]) -> bytes:
    listed = "".join(f"{o}\n" for o in objects).encode()
    done = subprocess.run(
        ["git", "pack-objects", "--stdout"], cwd=ws, check=True, input=listed, capture_output=True
    )
    return done.stdout


def write_bundle(world: World, head: str, *packs: bytes) -> None:
    header = f"# v2 git bundle\n-{world.base}\n{head} refs/heads/{BRANCH}\n\n".encode()
    world.session.bundle.write_bytes(header + b"".join(packs))


def new_objects(world: World, head: str) -> list[str]:
    listed = git(world.session.workspace, "rev-list", "--objects", f"{world.base}..{head}")
    return [line.split()[0] for line in listed.splitlines()]


LINK, TEXT = "120000", "100644"
SHAPES = {
    "link": (LINK, ".gitmodules", "/etc/passwd"),
    "link, case": (LINK, ".GITMODULES", "/etc/passwd"),
    "link, NTFS short name": (LINK, "gitmod~1", "/etc/passwd"),
    "link, HFS+ ignorable": (LINK, ".gitmodules\u200c", "/etc/passwd"),
    "url an option": (TEXT, ".gitmodules", MODULES.format(name="x", path="x", url="-u./p")),
    "url a newline": (TEXT, ".gitmodules", MODULES.format(name="x", path="x", url="https://a%0a@b/")),
    "path an option": (TEXT, ".gitmodules", MODULES.format(name="x", path="-x", url="https://a/b")),
    "name climbing": (TEXT, ".gitmodules", MODULES.format(name="../../x", path="x", url="https://a/b")),
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_a_hostile_gitmodules_is_refused(world: World, shape: str) -> None:
    mode, name, text = SHAPES[shape]
    ws = world.session.workspace
    head = commit_tree(world, [(mode, blob(ws, text), name)])
    with pytest.raises(RepoError, match="objects git's checks refuse"):
        await world.bring_back(head)
    refused(world)


async def test_a_refused_tree_no_commit_reaches_is_refused(world: World) -> None:
    ws = world.session.workspace
    hidden = git_dir_tree(ws)
    head = world.agent_commits({"b.txt": "two\n"})
    write_bundle(world, head, pack(ws, [*new_objects(world, head), hidden]))
    with pytest.raises(RepoError, match="hasDotgit"):
        await world.bring_back(head)
    refused(world)
    assert subprocess.run(["git", "cat-file", "-e", hidden], cwd=world.source).returncode != 0


async def test_a_second_pack_after_the_bundles_pack_is_refused(world: World) -> None:
    ws = world.session.workspace
    head = world.agent_commits({"b.txt": "two\n"})
    hidden = git_dir_tree(ws)
    write_bundle(world, head, pack(ws, new_objects(world, head)), pack(ws, [hidden]))
    with pytest.raises(RepoError, match="junk at the end"):
        await world.bring_back(head)
    refused(world)
    assert subprocess.run(["git", "cat-file", "-e", hidden], cwd=world.source).returncode != 0


async def test_a_gitmodules_whose_blob_the_source_holds_is_checked_too(tmp_path: Path) -> None:
    # The bundle leaves out what the base has: a hostile `.gitmodules` text committed to the
    # source as an ordinary file is named by the agent's tree and not in the pack.
    w = World(tmp_path)
    (w.source / "notes.txt").write_text(MODULES.format(name="x", path="x", url="-u./p"))
    subprocess.run(["git", "add", "notes.txt"], cwd=w.source, check=True)
    subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@localhost", "commit", "-qm",
                    "notes"], cwd=w.source, check=True)  # fmt: skip
    w.base = git(w.source, "rev-parse", "HEAD")
    await w.clone()
    ws = w.session.workspace
    text = git(ws, "rev-parse", "HEAD:notes.txt")
    head = commit_tree(w, [(TEXT, text, ".gitmodules")])
    assert text not in new_objects(w, head)
    with pytest.raises(RepoError, match="gitmodulesUrl"):
        await w.bring_back(head)
    refused(w)
