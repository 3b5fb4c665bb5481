"""Bringing a result back when the source is on another filesystem than the session, or
when its disk fills: the result lands, or nothing of a failed write is left in the source."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.second_filesystem import second_filesystem
from tests.small_tmpfs import small_tmpfs
from tests.support.bringback import World
from tests.tasks.conftest import BRANCH, git

from hal9999.errors import RepoError
from hal9999.redact import SecretMasker


@pytest.mark.parametrize("fillers", [0, 150])  # loose objects in the quarantine, or a pack
async def test_a_scanned_result_is_brought_back_into_a_source_on_another_filesystem(
    tmp_path: Path, fillers: int
) -> None:
    # The quarantine is in the session (under HAL_HOME) and the source anywhere: the pack of
    # what the scan saw was written in the quarantine and renamed into the source, which
    # fails across filesystems (EXDEV): every task with a secret and a change failed there.
    with second_filesystem(tmp_path) as other:
        w = World(tmp_path, sessions=other)
        await w.clone()
        head = w.agent_commits(
            {f"f{n}.txt": f"filler {n}\n" for n in range(fillers)} | {"a.txt": "two\n"}
        )
        w.bundle()
        await w.bring_back(head, SecretMasker(["sk-live-not-in-it-42"]))
    assert git(w.source, "rev-parse", BRANCH) == head
    git(w.source, "fsck", "--connectivity-only", "--no-progress")
    assert list((w.source / ".git" / "objects" / "pack").glob("tmp_*")) == []


@pytest.fixture
def small_source(tmp_path: Path) -> Iterator[Path]:
    """Where a source on a 1 MiB tmpfs goes (root only: it mounts one)."""
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


@pytest.mark.parametrize("masked", [False, True])  # the fetch's index-pack, or the keep's pack
async def test_a_result_too_large_for_the_sources_disk_leaves_no_partial_pack_there(
    small_source: Path, tmp_path: Path, masked: bool
) -> None:
    # git wrote the pack as objects/pack/tmp_pack_* and left it on failure: the source's
    # filesystem stayed full (the user's next `git status` could not write its index.lock).
    w = World(small_source, sessions=tmp_path)
    await w.clone()
    head = w.agent_commits({"big.bin": os.urandom(2 << 20).hex()[: 2 << 20]})
    w.bundle()
    pack_dir = w.source / ".git" / "objects" / "pack"
    pack_dir.mkdir(exist_ok=True)
    # A concurrent git's pack being written (held open), or one a git left before this
    # bring-back began, is not hal's to remove.
    (pack_dir / "tmp_pack_Before").write_bytes(b"PACK")
    os.utime(pack_dir / "tmp_pack_Before", (time.time() - 60, time.time() - 60))
    # Another user's (a shared repository), written now and not held open where hal can
    # see: a non-root hal cannot read that user's /proc/PID/fd, so it is never hal's.
    other = pack_dir / "tmp_pack_Other"
    other.write_bytes(b"PACK")
    os.chown(other, 65534, 65534)
    os.utime(other, (time.time() + 60, time.time() + 60))
    theirs = pack_dir / "tmp_pack_Theirs"
    held = os.open(theirs, os.O_CREAT | os.O_WRONLY, 0o444)
    try:
        os.write(held, b"PACK")
        os.utime(theirs, (time.time() + 60, time.time() + 60))
        with pytest.raises(RepoError, match=r"No space left|Out of diskspace"):
            await w.bring_back(head, SecretMasker(["sk-live-not-in-it-42"] if masked else []))
        left = sorted(p.name for p in pack_dir.iterdir() if p.name.startswith("tmp_"))
    finally:
        os.close(held)
    assert left == ["tmp_pack_Before", "tmp_pack_Other", "tmp_pack_Theirs"]
    assert git(w.source, "branch", "--list", BRANCH) == ""
    git(w.source, "fsck", "--no-progress")
