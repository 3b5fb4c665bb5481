"""The objects no ref of a copy of a source reaches, taken out of it (stops 48, 49): a
result's own pack is deleted with no git rewriting anything; a pack holding them among the
source's own objects is rewritten from the reached ones it holds, the clean packs left as
they are; a store holding nothing else costs one listing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.tasks.conftest import git, make_repo

from hal9999.tasks import unreached


def _copy_with_a_result(tmp_path: Path, gc: bool) -> tuple[Path, str, str]:
    """A bare copy of a source whose `hal/x` result was brought back as a pack of its own
    (and, with ``gc``, packed with the rest by the source's gc); the copy, the result's
    commit and its file's blob."""
    source = tmp_path / "source"
    make_repo(source, {"README": "hello\n"})
    git(source, "repack", "-a", "-d", "-q")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(source), str(work))
    (work / "secret.txt").write_text("another task's work\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "result")
    git(work, "bundle", "create", "-q", str(tmp_path / "r.bundle"), "main", "^main~1")
    git(source, "fetch", "-q", str(tmp_path / "r.bundle"), "main:refs/heads/hal/x")
    if gc:
        git(source, "gc", "-q")
    copy = tmp_path / "copy.git"
    git(tmp_path, "clone", "-q", "--bare", "--no-hardlinks", str(source), str(copy))
    tip = git(copy, "rev-parse", "hal/x")
    blob = git(copy, "rev-parse", "hal/x:secret.txt")
    git(copy, "update-ref", "-d", "refs/heads/hal/x")
    return copy, tip, blob


@pytest.mark.parametrize("gc", [False, True], ids=["own-pack", "packed-with-the-source"])
def test_only_the_objects_no_ref_reaches_go(tmp_path: Path, git_calls: list[str], gc: bool) -> None:
    copy, tip, blob = _copy_with_a_result(tmp_path, gc)
    packs = sorted((copy / "objects" / "pack").glob("*.pack"))
    for pack in packs:  # a .keep copied with its pack (the source's fetch in flight) or not
        pack.with_suffix(".keep").touch()
    assert len(packs) == (1 if gc else 2)
    asyncio.run(unreached.keep_only_reachable(copy, copy / "objects"))
    assert git_calls == (["rev-list", "pack-objects"] if gc else ["rev-list"])
    listed = git(copy, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    assert tip not in listed and blob not in listed
    assert git(copy, "show", "main:README") == "hello"
    git(copy, "fsck", "--strict")
    [left] = (copy / "objects" / "pack").glob("*.pack")
    assert (left in packs) == (not gc)  # the source's own pack kept as it was, or rewritten


def test_nothing_runs_past_the_listing_when_every_object_is_reached(
    tmp_path: Path, git_calls: list[str]
) -> None:
    copy, tip, _blob = _copy_with_a_result(tmp_path, False)
    git(copy, "update-ref", "refs/heads/merged", tip)  # the result was merged
    before = sorted(p.name for p in (copy / "objects" / "pack").iterdir())
    asyncio.run(unreached.keep_only_reachable(copy, copy / "objects"))
    assert git_calls == ["rev-list"]
    assert sorted(p.name for p in (copy / "objects" / "pack").iterdir()) == before
