"""A slot's links: what a clear allocates (issue 16: new inodes are dear on ext4 without a
journal, where each scans past the inodes its group freed in the last minute)."""

from __future__ import annotations

import os
from pathlib import Path

from hal9999.pool import SlotDir
from hal9999.spec import Bind, SandboxSpec


def spec_of(session: Path) -> SandboxSpec:
    for name in ("workspace", "home", "input"):
        (session / name).mkdir(parents=True, exist_ok=True)
    return SandboxSpec(
        provider="fake",
        workspace=session / "workspace",
        binds=(
            Bind(source=session / "home", target="/home/hal", read_only=False),
            Bind(source=session / "input", target="/hal", read_only=True),
        ),
    )


def test_a_clear_makes_no_new_inode_and_its_links_see_only_the_empty_dir(
    tmp_path: Path,
) -> None:
    slot = SlotDir(tmp_path / "pool").new()
    links = [slot.root / name for name in ("ws", "b0", "b1")]
    idle = os.lstat(slot.idle).st_ino
    for n in range(3):
        spec = spec_of(tmp_path / f"s{n}")
        slot.point(spec)
        assert [p.resolve() for p in links] == [
            spec.workspace, spec.binds[0].source, spec.binds[1].source
        ]  # fmt: skip
        slot.clear(spec)
        # Every idle link is the slot's one symlink to empty/: a clear allocated nothing.
        assert {os.lstat(p).st_ino for p in links} == {idle}
        assert all(p.is_symlink() and p.resolve() == slot.empty for p in links)
    assert sorted(p.name for p in slot.root.iterdir()) == ["b0", "b1", "empty", "idle", "ws"]


def test_a_slot_of_an_older_hal_gets_its_idle_link_at_its_first_clear(tmp_path: Path) -> None:
    slot = SlotDir(tmp_path / "pool").new()
    slot.idle.unlink()  # made before slots had one
    spec = spec_of(tmp_path / "s")
    slot.point(spec)
    slot.clear(spec)
    assert os.readlink(slot.idle) == str(slot.empty)
    assert os.lstat(slot.root / "ws").st_ino == os.lstat(slot.idle).st_ino
    # A wrong idle link (pointing anywhere but empty/) is made again, not trusted.
    slot.idle.unlink()
    os.symlink(tmp_path / "s" / "home", slot.idle)
    slot.clear(spec)
    assert (slot.root / "ws").resolve() == slot.empty
