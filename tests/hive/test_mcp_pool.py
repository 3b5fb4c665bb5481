"""A preset's files (claude's MCP config, codex's config.toml) written into the home of a
pooled sandbox, whose mounts go through its slot's links, are handed to the sandbox user:
the daemon's hive turns run in pooled sandboxes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hal9999.providers.host import user as sandboxuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def test_own_created_goes_through_a_slot_link_but_never_below_it(tmp_path: Path) -> None:
    home = tmp_path / "session" / "home"
    home.mkdir(parents=True)
    link = tmp_path / "slot-b0"
    link.symlink_to(home)  # as the pool's slot does
    (home / ".hal").mkdir()
    (home / ".hal" / "mcp.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "planted").symlink_to(outside)  # what an agent could plant below the mount
    sandboxuser.own_created(link, ".hal/mcp.json", 4242)
    sandboxuser.own_created(link, "planted/x", 4242)
    assert (home / ".hal").stat().st_uid == 4242
    assert (home / ".hal" / "mcp.json").stat().st_uid == 4242
    assert outside.stat().st_uid == 0
