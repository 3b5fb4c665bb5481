"""A slot's links: what a hand-over and a clear allocate (new inodes are dear on
ext4 without a journal, where each scans past the inodes its group freed in the last
minute), and that they reach the task's files, or nothing, as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hal9999.pool import SlotDir
from hal9999.spec import Bind, SandboxSpec


def spec_of(session: Path, *, elsewhere: Path | None = None) -> SandboxSpec:
    for name in ("workspace", "home", "input"):
        (session / name).mkdir(parents=True, exist_ok=True)
    binds = [
        Bind(source=session / "home", target="/home/hal", read_only=False),
        Bind(source=session / "input", target="/hal", read_only=True),
    ]
    if elsewhere is not None:
        elsewhere.mkdir(parents=True, exist_ok=True)
        binds.append(Bind(source=elsewhere, target="/cred", read_only=True))
    return SandboxSpec(provider="fake", workspace=session / "workspace", binds=tuple(binds))


def inodes(root: Path) -> set[int]:
    return {os.lstat(p).st_ino for p in root.iterdir()}


def test_a_hand_over_makes_one_inode_and_a_clear_none(tmp_path: Path) -> None:
    slot = SlotDir(tmp_path / "pool").new()
    links = [slot.root / name for name in ("ws", "b0", "b1")]
    spec = spec_of(tmp_path / "s0")
    slot.point(spec)  # the first hand-over makes the links
    slot.clear(spec)
    for n in range(1, 4):
        spec = spec_of(tmp_path / f"s{n}")
        before = inodes(slot.root)
        slot.point(spec)
        assert len(inodes(slot.root) - before) == 1, "one new inode: the link to the session"
        assert [p.resolve() for p in links] == [
            spec.workspace, spec.binds[0].source, spec.binds[1].source
        ]  # fmt: skip
        before = inodes(slot.root)
        slot.clear(spec)
        assert inodes(slot.root) - before == set(), "a clear makes no inode"
        assert os.lstat(slot.root / "cur").st_ino == os.lstat(slot.idle).st_ino
        for link in links:  # each shows an empty directory of the slot's own
            seen = link.resolve()
            assert seen.is_relative_to(slot.empty) and list(seen.iterdir()) == []


def test_a_source_outside_the_session_gets_a_link_of_its_own(tmp_path: Path) -> None:
    slot = SlotDir(tmp_path / "pool").new()
    creds = tmp_path / "creds"
    spec = spec_of(tmp_path / "s0", elsewhere=creds)
    slot.point(spec)
    assert os.readlink(slot.root / "b2") == str(creds)
    assert (slot.root / "b2").resolve() == creds
    slot.clear(spec)
    assert (slot.root / "b2").resolve() == slot.empty
    assert os.lstat(slot.root / "b2").st_ino == os.lstat(slot.idle).st_ino
    # A later task whose bind is in its session: the link goes through cur again.
    later = spec_of(tmp_path / "s1")
    later = later.model_copy(
        update={"binds": (*later.binds, Bind(source=tmp_path / "s1" / "input", target="/cred"))}
    )
    slot.point(later)
    assert os.readlink(slot.root / "b2") == "cur/input"
    assert (slot.root / "b2").resolve() == tmp_path / "s1" / "input"


def test_a_slot_of_an_older_hal_gets_its_idle_link_at_its_first_clear(tmp_path: Path) -> None:
    slot = SlotDir(tmp_path / "pool").new()
    slot.idle.unlink()  # made before slots had one
    spec = spec_of(tmp_path / "s")
    slot.point(spec)
    slot.clear(spec)
    assert os.readlink(slot.idle) == str(slot.empty)
    assert os.lstat(slot.root / "cur").st_ino == os.lstat(slot.idle).st_ino
    # A wrong idle link (pointing anywhere but empty/) is made again, not trusted.
    slot.idle.unlink()
    os.symlink(tmp_path / "s" / "home", slot.idle)
    slot.clear(spec)
    assert (slot.root / "ws").resolve().is_relative_to(slot.empty)
    # Links of an older slot (absolute, to a session) are pointed through cur at the next
    # hand-over.
    os.unlink(slot.root / "ws")
    os.symlink(tmp_path / "s" / "workspace", slot.root / "ws")
    slot.point(spec_of(tmp_path / "t"))
    assert os.readlink(slot.root / "ws") == "cur/workspace"
    assert (slot.root / "ws").resolve() == tmp_path / "t" / "workspace"


def test_a_clear_makes_the_empty_directories_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each clear made empty/ and every directory a link through cur shows
    # again (a mkdir and a stat each).
    slot = SlotDir(tmp_path / "pool").new()
    spec = spec_of(tmp_path / "s0")
    slot.point(spec)
    slot.clear(spec)
    made: list[str] = []
    real_mkdir = os.mkdir
    monkeypatch.setattr(
        os, "mkdir", lambda path, *a, **k: made.append(str(path)) or real_mkdir(path, *a, **k)
    )
    for n in range(1, 4):
        spec = spec_of(tmp_path / f"s{n}")
        made.clear()
        slot.point(spec)
        slot.clear(spec)
        assert not [p for p in made if p.startswith(str(slot.root))]
        for name in ("ws", "b0", "b1"):
            assert (slot.root / name).resolve().is_relative_to(slot.empty)
            assert (slot.root / name).is_dir()
    # A link to a new place in the session gets its empty directory at its first clear.
    other = spec.model_copy(
        update={
            "binds": (
                *spec.binds,
                spec.binds[0].model_copy(
                    update={"source": tmp_path / "s3" / "input" / "deeper", "target": "/deeper"}
                ),
            )
        }
    )
    (tmp_path / "s3" / "input" / "deeper").mkdir()
    slot.point(other)
    made.clear()
    slot.clear(other)
    assert made == [str(slot.empty / "input" / "deeper")]
    assert (slot.root / "b2").is_dir()
