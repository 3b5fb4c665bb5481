"""The uid switch in the provider's shared files: a link to the built program, or a copy
of it where ``HAL_HOME`` lies on another filesystem, made once and left alone after."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.providers.host.user import DROP_HELPER_WAITS, install_helper, waits


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A directory on another filesystem than ``tmp_path`` (a tmpfs)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    path = Path(tempfile.mkdtemp(prefix="hal-test-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def built(path: Path, data: bytes, mtime_ns: int) -> str:
    path.write_bytes(data)
    path.chmod(0o755)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return str(path)


def test_a_copy_across_filesystems_is_made_once_and_kept(tmp_path: Path, elsewhere: Path) -> None:
    helper = built(tmp_path / "hal-drop", b"\x7fELF one", 1_700_000_000_000_000_000)
    target = elsewhere / "shared" / "hal-drop"
    install_helper(helper, target)
    first = target.stat()
    assert not os.path.samestat(first, os.stat(helper))  # a copy: no link across devices
    assert target.read_bytes() == b"\x7fELF one" and first.st_mode & 0o777 == 0o755
    for _ in range(3):  # every create and reset checks
        install_helper(helper, target)
    assert os.path.samestat(target.stat(), first)  # the same file, never replaced


def test_a_copy_is_replaced_when_the_program_changes_or_it_was_changed(
    tmp_path: Path, elsewhere: Path
) -> None:
    helper = built(tmp_path / "hal-drop", b"\x7fELF one", 1_700_000_000_000_000_000)
    target = elsewhere / "hal-drop"
    install_helper(helper, target)
    built(tmp_path / "hal-drop", b"\x7fELF two!", 1_700_000_001_000_000_000)  # rebuilt
    install_helper(helper, target)
    assert target.read_bytes() == b"\x7fELF two!"
    target.chmod(0o777)  # not a copy it would make
    install_helper(helper, target)
    assert target.stat().st_mode & 0o777 == 0o755
    os.link(target, elsewhere / "second-name")  # another name could change it
    install_helper(helper, target)
    assert target.stat().st_nlink == 1 and target.read_bytes() == b"\x7fELF two!"


def test_on_one_filesystem_it_is_a_link_to_the_program(tmp_path: Path) -> None:
    helper = built(tmp_path / "hal-drop", b"\x7fELF one", 1_700_000_000_000_000_000)
    target = tmp_path / "home" / "cache" / "hal-drop"
    install_helper(helper, target)
    install_helper(helper, target)
    assert os.path.samestat(target.stat(), os.stat(helper))


def test_a_keeper_waits_in_the_switch_only_when_its_build_says_it_can(tmp_path: Path) -> None:
    # An older build would take `--wait` for a usage error: the keeper then died at once.
    program = built(tmp_path / "hal-drop", b"\x7fELF old build", 1_000_000_000)
    assert not waits(program)
    # Rebuilt in place (another size and time): read again, not the first answer kept.
    built(tmp_path / "hal-drop", b"\x7fELF " + DROP_HELPER_WAITS + b" new", 2_000_000_000)
    assert waits(program)
