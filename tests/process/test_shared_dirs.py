"""hal's directories in the shared /tmp (tmux's sockets, PM2's home, the VMs' run directory):
whoever makes one first could replace hal's sockets in it, so one that is not this user's
alone (mode 700) is refused in one line naming it and the fix, and a fresh one is made 700."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from hal9999.errors import HalError
from hal9999.process import pm2, tmuxearly
from hal9999.providers.qemu import vm as qemuvm


@pytest.fixture(params=["tmux", "pm2", "qemu"])
def shared(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(the directory hal would use, a call that makes or checks it) for each user of /tmp."""
    monkeypatch.delenv("HAL_PM2_HOME", raising=False)
    monkeypatch.delenv("HAL_QEMU_RUN_DIR", raising=False)
    if request.param == "tmux":
        where = tmp_path / "hal9999-tmux-x"
        monkeypatch.setattr(tmuxearly, "SOCKET_DIR", str(where))
        return where, tmuxearly.own_socket_dir
    if request.param == "pm2":
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        manager = pm2.Pm2ProcessManager()
        assert manager.home == tmp_path / f"hal9999-pm2-{os.getuid()}"
        return manager.home, manager._make_home
    monkeypatch.setattr(qemuvm, "SHARED_RUN_ROOT", str(tmp_path / "hal9999-qemu-{uid}"))
    return tmp_path / f"hal9999-qemu-{os.getuid()}", qemuvm.run_root


def test_a_fresh_directory_is_made_for_this_user_alone(shared) -> None:
    where, make = shared
    make()
    found = os.lstat(where)
    assert found.st_uid == os.geteuid() and found.st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o755, 0o710])
def test_one_others_can_enter_or_write_is_refused_in_one_line(shared, mode: int) -> None:
    where, make = shared
    where.mkdir()
    where.chmod(mode)
    with pytest.raises(HalError) as refused:
        make()
    assert str(where) in str(refused.value) and "\n" not in str(refused.value)
    assert "yours" in (refused.value.hint or "")
    assert where.stat().st_mode & 0o7777 == mode  # left as found: not hal's to change


def test_a_link_in_its_place_is_refused(shared, tmp_path: Path) -> None:
    where, make = shared
    mine = tmp_path / "elsewhere"
    mine.mkdir(mode=0o700)
    where.symlink_to(mine)
    with pytest.raises(HalError):
        make()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user owns")
def test_one_another_user_owns_is_refused(shared) -> None:
    where, make = shared
    where.mkdir(mode=0o700)
    os.chown(where, 65534, 65534)
    with pytest.raises(HalError):
        make()


def test_the_early_pane_is_not_opened_in_a_directory_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = tmp_path / "hal9999-tmux-x"
    where.mkdir()
    where.chmod(0o777)
    monkeypatch.setattr(tmuxearly, "SOCKET_DIR", str(where))
    monkeypatch.setattr(tmuxearly, "_early", None)
    tmuxearly.open_early("tmux", None)
    assert tmuxearly._early is None and list(where.iterdir()) == []
