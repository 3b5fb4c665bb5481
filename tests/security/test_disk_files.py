"""The per-sandbox limit on files (``disk_files``): the watchdog's count sees every name the
sandbox made in its writable dirs, however the agent hides them, and the task past it stops
with ``disk_limit`` naming the limit and its setting."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from hal9999.errors import DiskLimitExceeded
from hal9999.providers import limits
from hal9999.spec import Resources


def made(root: Path) -> int:
    """Lay out ways to hide files in ``root``: returns how many names it holds."""
    (root / "plain").mkdir()
    for n in range(3):
        (root / "plain" / f"f{n}").touch()
    (root / "plain" / "f0").rename(root / "plain" / "g0")
    os.link(root / "plain" / "g0", root / "plain" / "same")  # a second name counts too
    (root / "link").symlink_to("/etc")  # a link is an inode; /etc is not walked
    (root / "shut").mkdir()
    for n in range(4):
        (root / "shut" / f"h{n}").touch()
    (root / "shut").chmod(0)  # unreadable: the files inside still count
    # root, plain, its 3 files and the second name, link, shut and its 4 files
    return 1 + 1 + 4 + 1 + 1 + 4


def test_every_inode_counts_however_it_is_hidden(tmp_path: Path) -> None:
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    expected = made(work) + made(scratch)
    try:
        use = asyncio.run(limits.use_of([work, scratch], Resources(disk_mb=1, disk_files=5)))
    finally:
        for shut in (work / "shut", scratch / "shut"):
            shut.chmod(0o700)
    assert use.used_files == expected
    assert use.limit_files == 5 and use.over_files
    assert use.limit_bytes == 1 << 20


def test_no_file_limit_walks_once(tmp_path: Path) -> None:
    (tmp_path / "a").touch()
    use = asyncio.run(limits.use_of([tmp_path], Resources(disk_mb=1)))
    assert (use.used_files, use.limit_files) == (0, None)
    assert not use.over_files


def test_a_default_limit_on_files() -> None:
    assert limits.effective(Resources()).disk_files == limits.DEFAULT_DISK_FILES
    assert limits.effective(Resources(disk_files=0)).disk_files is None


class Many:
    """A sandbox over its file limit but under its byte limit."""

    async def disk_use(self) -> limits.DiskUse:
        return limits.DiskUse(4096, 1 << 30, 2001, 2000)


def test_the_watchdog_stops_a_task_over_its_file_limit(tmp_path: Path) -> None:
    dog = limits.DiskWatchdog(Many(), tmp_path)
    dog._due = 0.0
    with pytest.raises(DiskLimitExceeded) as raised:
        asyncio.run(dog.check())
    message = str(raised.value)
    assert "2001 files" in message and "limit of 2000" in message
    assert "disk_files" in message and "disk_files" in (raised.value.hint or "")


def test_an_untrusted_project_may_only_lower_the_file_limit() -> None:
    from hal9999.trust import narrow_project_table

    base = limits.defaults().model_dump()
    lower = {"resources": {"disk_files": 1000}}
    assert narrow_project_table(lower, {}, base) == (lower, [])
    for asked in (limits.DEFAULT_DISK_FILES + 1, 0):
        kept, ignored = narrow_project_table({"resources": {"disk_files": asked}}, {}, base)
        assert "resources" not in kept and ignored and "resources.disk_files" in ignored[0]
