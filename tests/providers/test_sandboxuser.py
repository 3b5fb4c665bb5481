"""Handing host-written files to a sandbox's uid: a pool slot's link as the mount source."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest
from tests.support.pool import dig

from hal9999.providers.host import scratch
from hal9999.providers.host import user as sandboxuser
from hal9999.providers.host.user import adopt, own_created

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


def test_a_tree_deeper_than_the_stack_and_the_descriptors_is_handed_over(
    tmp_path: Path,
) -> None:
    # An agent's home 1,500 levels deep, seen by the next run's create: os.fwalk recursed (a
    # RecursionError, a traceback from `hal task resume` on every try) and held an fd a level.
    root = tmp_path / "home"
    fd = dig(root, 1500)
    os.mknod("leaf", dir_fd=fd)
    os.symlink(tmp_path / "outside", "link", dir_fd=fd)
    (tmp_path / "outside").write_text("host file")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        adopt(root, 54321)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        deepest = os.stat("leaf", dir_fd=fd, follow_symlinks=False)
        os.close(fd)
        scratch.remove_tree(root)
    assert deepest.st_uid == deepest.st_gid == 54321
    assert (tmp_path / "outside").stat().st_uid == 0


def test_a_tree_under_a_slot_link_is_handed_over_without_resolving_it_in_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Realpath's lstat of every component of the mount source (a pool slot's link
    # to a session) was most of the walk of a trivial task's workspace; the kernel follows
    # the links when the root is opened. A root that is no directory is refused as before.
    session = tmp_path / "sessions" / "t1" / "workspace"
    (session / "src").mkdir(parents=True)
    (session / "src" / "main.py").write_text("x")
    (session / "README").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("host file")
    slot = tmp_path / "pool" / "key" / "ws"
    slot.parent.mkdir(parents=True)
    slot.symlink_to(session)

    def no_realpath(path: object, *a: object, **kw: object) -> str:
        raise AssertionError(f"realpath({path!r})")

    with monkeypatch.context() as patched:
        patched.setattr(os.path, "realpath", no_realpath)
        adopt(slot, 54321)
    for path in (session, session / "src", session / "src" / "main.py"):
        assert (path.stat().st_uid, path.stat().st_gid) == (54321, 54321), path
    assert os.lstat(session / "README").st_uid == 54321
    assert (tmp_path / "outside").stat().st_uid == 0 and os.lstat(slot).st_uid == 0
    with pytest.raises(NotADirectoryError):
        adopt(tmp_path / "outside", 54321)
    assert (tmp_path / "outside").stat().st_uid == 54321  # handed over, then refused, as before


def test_allocate_leaves_a_whole_lock_file_and_held_by_finds_what_a_kill_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandboxuser, "LOCK_DIR", tmp_path / "uids")
    uid = sandboxuser.allocate("docker aaaaaaaaaaaa")
    assert os.listdir(tmp_path / "uids") == [str(uid)], "no draft stays"
    assert (tmp_path / "uids" / str(uid)).read_text() == "docker aaaaaaaaaaaa\n"
    # A kill after the link, before the draft went; and an older hal's empty lock file.
    draft = tmp_path / "uids" / (sandboxuser._draft("docker bbbbbbbbbbbb") + "x")
    draft.write_text("docker bbbbbbbbbbbb\n")
    empty, fresh = tmp_path / "uids" / str(uid + 1), tmp_path / "uids" / str(uid + 2)
    empty.touch()
    fresh.touch()
    os.utime(empty, (1, 1))
    assert sandboxuser.held_by("docker bbbbbbbbbbbb") == []
    assert sorted(os.listdir(tmp_path / "uids")) == sorted([str(uid), fresh.name]), (
        "the draft and the old empty lock go; one being written now stays"
    )


def test_drafts_of_dead_writers_go_at_the_sweep_and_a_live_ones_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bwrap or qemu hal killed inside allocate left its draft until reboot (held_by, which
    removes drafts, is called for docker owners only). The daemon's start sweep removes the
    drafts whose writer is dead; an allocate under way keeps its own."""
    uids = tmp_path / "uids"
    monkeypatch.setattr(sandboxuser, "LOCK_DIR", uids)
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid no longer runs
    dead_pid = child.pid
    ours = sandboxuser._started(os.getpid())
    seen: list[bool] = []
    real_link = os.link

    def link_and_sweep(src: str, dst: str) -> None:
        assert sandboxuser.sweep_drafts() == 0  # the live allocate's own draft stays
        seen.append(Path(src).exists())
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_and_sweep)
    uid = sandboxuser.allocate("/home/state/bwrap aaaa")
    monkeypatch.setattr(os, "link", real_link)
    assert seen == [True]
    prefix = sandboxuser._draft("/home/state/qemu bbbb")
    killed = uids / f"{prefix}{dead_pid}.{ours}-0001"  # its writer is gone
    reused = uids / f"{prefix}{os.getpid()}.1-0002"  # the pid runs, but another process
    alive = uids / f"{prefix}{os.getpid()}.{ours}-0003"  # a writer still at work
    old, young = uids / f"{prefix}0004", uids / f"{prefix}0005"  # an older hal's, no writer
    for path in (killed, reused, alive, old, young):
        path.write_text("owner\n")
    os.utime(old, (1, 1))
    assert sandboxuser.sweep_drafts() == 3
    assert sorted(os.listdir(uids)) == sorted([str(uid), alive.name, young.name])


def test_a_draft_written_without_a_readable_proc_is_not_swept_while_its_writer_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host whose /proc this hal cannot read, the draft was named ``<pid>.None``: the
    sweep read the writer's start as None, not "None", and removed a draft being written
    (its allocate then failed at the link). Now such a draft names no writer and goes only
    once :data:`EMPTY_STALE_S` old; the sweep there removes no draft younger."""
    uids = tmp_path / "uids"
    monkeypatch.setattr(sandboxuser, "LOCK_DIR", uids)
    monkeypatch.setattr(sandboxuser, "_started", lambda pid: None)  # no /proc
    names: list[str] = []
    real_link = os.link

    def link_and_sweep(src: str, dst: str) -> None:
        names.append(Path(src).name)
        assert sandboxuser.sweep_drafts() == 0, "the live allocate's own draft stays"
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_and_sweep)
    uid = sandboxuser.allocate("/home/state/bwrap aaaa")
    monkeypatch.setattr(os, "link", real_link)
    assert len(names) == 1 and "None" not in names[0]
    assert os.listdir(uids) == [str(uid)]
    prefix = sandboxuser._draft("/home/state/qemu bbbb")
    written = uids / f"{prefix}{os.getpid()}.12345-0001"  # a writer /proc cannot tell alive
    old = uids / f"{prefix}{os.getpid()}.12345-0002"
    for path in (written, old):
        path.write_text("owner\n")
    os.utime(old, (1, 1))
    assert sandboxuser.sweep_drafts() == 1
    assert sorted(os.listdir(uids)) == sorted([str(uid), written.name])
