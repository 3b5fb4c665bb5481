"""Handing host-written files to a sandbox's uid: a pool slot's link as the mount source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hal9999.providers.sandboxuser import own_created

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def test_a_file_written_through_a_pool_slot_link_goes_to_the_sandbox_user(
    tmp_path: Path,
) -> None:
    session_home = tmp_path / "sessions" / "t1" / "home"
    (session_home / ".claude").mkdir(parents=True)
    (session_home / ".claude" / "settings.json").write_text("{}")
    slot = tmp_path / "pool" / "key" / "b0"  # what a warm sandbox's bind source is
    slot.parent.mkdir(parents=True)
    slot.symlink_to(session_home)
    own_created(slot, ".claude/settings.json", 54321)
    assert (session_home / ".claude").stat().st_uid == 54321
    assert (session_home / ".claude" / "settings.json").stat().st_uid == 54321


def test_a_link_below_the_root_is_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("host file")
    (root / "planted").symlink_to(outside)
    own_created(root, "planted", 54321)
    assert outside.stat().st_uid == 0
