"""hostfs: host-side file operations on sandbox paths never follow, block on or write
through what a command inside planted, even when it swaps things between check and use.

The workspace is on the test's tmp filesystem or on /dev/shm (host files stay on tmp).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.second_filesystem import second_filesystem

from hal9999.errors import ExecError, UnsafePath
from hal9999.providers.host import fs as hostfs

WS = "/workspace"


@pytest.fixture(params=["same-fs", "other-fs"])
def workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "same-fs":
        path = tmp_path / "ws"
        path.mkdir()
        yield path
        return
    with second_filesystem(tmp_path) as other:
        yield other


@pytest.fixture
def host(tmp_path: Path) -> Path:
    path = tmp_path / "host"
    path.mkdir()
    (path / "shadow").write_text("host secret\n")
    return path


@pytest.fixture
def paths(workspace: Path) -> hostfs.PathMap:
    return hostfs.PathMap([hostfs.Mount(WS, workspace, writable=True)], cwd=WS)


def mapped(paths: hostfs.PathMap, name: str, *, follow: bool) -> hostfs.HostPath:
    where = paths.host(f"{WS}/{name}", follow=follow)
    assert where is not None
    return where


def test_a_link_anywhere_on_the_path_is_left_to_the_sandbox(
    paths: hostfs.PathMap, workspace: Path, host: Path
) -> None:
    (workspace / "to-secret").symlink_to(host / "shadow")
    (workspace / "to-dir").symlink_to(host)
    (workspace / "inside").symlink_to("real")  # even a link that stays inside
    (workspace / "real").write_text("x")
    assert paths.host(f"{WS}/to-secret", follow=True) is None
    assert paths.host(f"{WS}/to-dir/shadow", follow=False) is None
    assert paths.host(f"{WS}/inside", follow=True) is None
    assert paths.host(f"{WS}/inside", follow=False) is not None  # acting on the link itself


def test_a_file_swapped_for_a_link_after_the_check_is_not_read(
    paths: hostfs.PathMap, workspace: Path, host: Path
) -> None:
    (workspace / "notes").write_text("harmless")
    where = mapped(paths, "notes", follow=True)
    (workspace / "notes").unlink()
    (workspace / "notes").symlink_to(host / "shadow")
    with pytest.raises(UnsafePath, match="symlink"):
        hostfs.read_file(where, f"{WS}/notes")


def test_a_parent_swapped_for_a_link_after_the_check_is_not_written_through(
    paths: hostfs.PathMap, workspace: Path, host: Path
) -> None:
    (workspace / "d").mkdir()
    where = mapped(paths, "d/cred", follow=False)
    (workspace / "d").rmdir()
    (workspace / "d").symlink_to(host)  # dangling below: host/cred does not exist yet
    with pytest.raises(UnsafePath):
        hostfs.write_file_atomic(where, f"{WS}/d/cred", b"token", 0o600)
    assert not (host / "cred").exists()
    with pytest.raises(UnsafePath):
        hostfs.mkdir(mapped_unchecked(workspace, "d/sub"), f"{WS}/d/sub", 0o755)
    assert not (host / "sub").exists()


def mapped_unchecked(workspace: Path, relative: str) -> hostfs.HostPath:
    """A HostPath as the check made it before the swap."""
    return hostfs.HostPath(workspace / relative, True, False, workspace, relative, WS)


def test_a_fifo_never_blocks_the_host(paths: hostfs.PathMap, workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")
    where = mapped(paths, "pipe", follow=True)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(hostfs.read_file(where, f"{WS}/pipe"))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # unblock the old code's open() so the test can end
        with open(workspace / "pipe", "wb"):
            pass
        pytest.fail("reading a FIFO the agent planted blocked the host")
    assert isinstance(outcome[0], UnsafePath) and "FIFO" in str(outcome[0])


def test_a_hard_link_to_a_host_file_is_neither_read_nor_written_through(
    paths: hostfs.PathMap, workspace: Path, host: Path
) -> None:
    try:
        os.link(host / "shadow", workspace / "linked")
    except OSError:
        pytest.skip("a hard link cannot cross filesystems")
    where = mapped(paths, "linked", follow=True)
    with pytest.raises(UnsafePath, match="hard links"):
        hostfs.read_file(where, f"{WS}/linked")
    hostfs.write_file_atomic(mapped(paths, "linked", follow=False), f"{WS}/linked", b"new", 0o600)
    assert (host / "shadow").read_text() == "host secret\n"
    assert (workspace / "linked").read_bytes() == b"new"


def test_a_directory_in_the_way(paths: hostfs.PathMap, workspace: Path) -> None:
    (workspace / "d").mkdir()
    (workspace / "d" / "keep").write_text("x")
    with pytest.raises(ExecError):
        hostfs.read_file(mapped(paths, "d", follow=True), f"{WS}/d")
    with pytest.raises(ExecError):
        hostfs.write_file_atomic(mapped(paths, "d", follow=False), f"{WS}/d", b"x", 0o600)
    assert (workspace / "d" / "keep").read_text() == "x"


def test_remove_takes_a_link_not_its_target(
    paths: hostfs.PathMap, workspace: Path, host: Path
) -> None:
    (workspace / "tree").mkdir()
    (workspace / "tree" / "out").symlink_to(host)
    (workspace / "link").symlink_to(host / "shadow")
    hostfs.remove(mapped(paths, "link", follow=False), f"{WS}/link", False)
    hostfs.remove(mapped(paths, "tree", follow=False), f"{WS}/tree", True)
    assert (host / "shadow").read_text() == "host secret\n"
    assert sorted(os.listdir(workspace)) == []
    # Swapped for a link to a host directory after the check: the link goes, not the tree.
    (workspace / "tree").mkdir()
    where = mapped(paths, "tree", follow=False)
    (workspace / "tree").rmdir()
    (workspace / "tree").symlink_to(host)
    hostfs.remove(where, f"{WS}/tree", True)
    assert (host / "shadow").exists()
