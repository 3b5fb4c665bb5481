"""The sessions directory is flagged for the filesystem to spread the directories made in
it (ext2/3/4's ``chattr +T``: a session's inodes in one block group cost a busy daemon far
more CPU than spread), once a process, and only where the flag exists."""

from __future__ import annotations

import array
import fcntl
import os
from pathlib import Path

import pytest

from hal9999 import home
from hal9999.home import HalPaths


def flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        value = array.array("i", [0])
        fcntl.ioctl(fd, home._FS_IOC_GETFLAGS, value, True)
        return value[0]
    finally:
        os.close(fd)


@pytest.fixture
def flaggable(tmp_path: Path) -> Path:
    probe = tmp_path / "probe"
    probe.mkdir()
    if not home.spread_subdirs(probe):
        pytest.skip("this filesystem has no FS_TOPDIR_FL (not ext2/3/4)")
    return tmp_path


def test_the_sessions_directory_is_flagged_to_spread_its_subdirectories(
    flaggable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(home, "_SPREAD", set())
    paths = HalPaths(flaggable / "home").ensure()
    assert flags(paths.sessions) & home._TOPDIR_FL  # without the change, not set
    assert not flags(paths.home) & home._TOPDIR_FL  # the home itself is left as it was
    made = paths.ensure_session("t1")
    assert made.is_dir() and not flags(made) & home._TOPDIR_FL


def test_the_flag_is_asked_for_once_a_process(
    flaggable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(home, "_SPREAD", set())
    calls: list[Path] = []
    original = home.spread_subdirs

    def counted(path: Path) -> bool:
        calls.append(path)
        return original(path)

    monkeypatch.setattr(home, "spread_subdirs", counted)
    paths = HalPaths(flaggable / "home")
    for task in ("t1", "t2", "t3"):
        paths.ensure_session(task)
    assert calls == [paths.sessions]


def test_a_directory_the_flag_cannot_be_set_on_is_left_as_it_was(tmp_path: Path) -> None:
    assert not home.spread_subdirs(tmp_path / "missing")
    assert not home.spread_subdirs(Path("/proc/self"))  # procfs: no such flag


def test_the_pools_slots_and_a_providers_sandboxes_are_spread_too(flaggable: Path) -> None:
    # A slot makes and frees a symlink every task (`cur`), a sandbox's record is saved anew
    # at each stop and start: each in a block group of its own, not all in their parent's.
    from hal9999.pool.slots import SlotDir
    from hal9999.providers.host.records import RecordStore

    slots = SlotDir(flaggable / "pool")
    first = slots.new()
    slots.new()
    assert flags(slots.root) & home._TOPDIR_FL  # without the change, not set
    assert not flags(first.root) & home._TOPDIR_FL
    store = RecordStore(flaggable / "sandboxes" / "bwrap")
    made = store.make_dir("0123456789ab")
    assert made == store.dir("0123456789ab") and made.is_dir()
    assert flags(store.root) & home._TOPDIR_FL
    with pytest.raises(FileExistsError):
        store.make_dir("0123456789ab")
