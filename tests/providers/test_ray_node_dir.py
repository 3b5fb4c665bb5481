"""The Ray node host's directory (``rayhost.NodeHost``) in a shared place such as /var/tmp:
made without following a link, refused in one line when another user planted a link there,
made it first, or could swap a part of its path; the host code is called on its own (no Ray
cluster: the directory is made before anything of Ray is used)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hal9999.errors import ProviderError
from hal9999.providers.ray.host import NodeHost

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(os.geteuid() != 0, reason="another user's files are made by root"),
]

OTHER = 65534
"""Another local user (nobody), as whom the hostile files are made."""


def shared(tmp_path: Path) -> Path:
    """A place like /var/tmp: root's, world-writable and sticky."""
    place = tmp_path / "vartmp"
    place.mkdir()
    place.chmod(0o1777)
    return place


def victim(tmp_path: Path) -> Path:
    """A directory of the other user's, where a planted link points."""
    target = tmp_path / "victim"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    os.chown(target, OTHER, OTHER)
    return target


def refused(root: Path) -> str:
    with pytest.raises(ProviderError) as caught:
        NodeHost("n1", str(root))
    line = caught.value.one_line()
    assert "\n" not in line and "node_dir" in line, line
    return line


def test_a_planted_link_to_another_users_directory_is_refused_untouched(tmp_path: Path) -> None:
    place, target = shared(tmp_path), victim(tmp_path)
    (place / "hal9999-ray").symlink_to(target)
    os.lchown(place / "hal9999-ray", OTHER, OTHER)
    line = refused(place / "hal9999-ray" / "hal9999" / "n1")
    assert "hal9999-ray" in line, line
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert os.listdir(target) == []


def test_a_planted_link_to_a_directory_of_roots_is_refused(tmp_path: Path) -> None:
    # The link leads somewhere no one else can write: hal would create its files there.
    place, target = shared(tmp_path), tmp_path / "system"
    target.mkdir(mode=0o755)
    (place / "hal9999-ray").symlink_to(target)
    os.lchown(place / "hal9999-ray", OTHER, OTHER)
    refused(place / "hal9999-ray")
    assert os.listdir(target) == []


def test_a_directory_another_user_made_first_is_refused(tmp_path: Path) -> None:
    place = shared(tmp_path)
    (place / "hal9999-ray").mkdir(mode=0o755)
    os.chown(place / "hal9999-ray", OTHER, OTHER)
    refused(place / "hal9999-ray" / "hal9999" / "n1")
    assert os.listdir(place / "hal9999-ray") == []


def test_a_part_another_user_can_swap_is_refused(tmp_path: Path) -> None:
    # Ours, but its parent is the other user's: they could rename it and put theirs there.
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "hal9999-ray").mkdir(mode=0o700)
    os.chown(theirs, OTHER, OTHER)
    refused(theirs / "hal9999-ray")
    # And a directory of ours that anyone may write (a link could be planted inside).
    place = shared(tmp_path)
    (place / "open").mkdir()
    (place / "open").chmod(0o777)
    refused(place / "open" / "n1")


def test_the_directory_is_made_private_and_an_older_hals_is_kept(tmp_path: Path) -> None:
    place = shared(tmp_path)
    host = NodeHost("n1", str(place / "hal9999-ray" / "hal9999" / "n1"))
    for part in (place / "hal9999-ray", host.root.parent, host.root):
        info = os.lstat(part)
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
        assert stat.S_IMODE(info.st_mode) == 0o700, part
    # As an older hal left them (parents made 0755 by mkdir -p, its own 0700): ours, and
    # no one else can write them, so taken as they are.
    (place / "hal9999-ray").chmod(0o755)
    host.root.parent.chmod(0o755)
    assert NodeHost("n1", str(host.root)).root == host.root
    # Its own directory open to others is not: someone may be inside it already.
    host.root.chmod(0o755)
    refused(host.root)
