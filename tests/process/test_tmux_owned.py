"""A tmux manager removes the socket entry it made for a run when it sees the run end, and
only that one (:mod:`hal9999.process.tmuxowned`)."""

from __future__ import annotations

import os
from pathlib import Path

from hal9999.process.tmuxowned import OwnSockets


def test_the_entry_it_made_goes_at_the_runs_end(tmp_path: Path) -> None:
    own, link = OwnSockets(), tmp_path / "run"
    os.symlink(tmp_path / "shared", link)
    own.note(link)
    own.remove(link)
    assert not os.path.lexists(link)


def test_an_entry_another_run_made_since_stays(tmp_path: Path) -> None:
    own, socket = OwnSockets(), tmp_path / "run"
    socket.write_bytes(b"")
    own.note(socket)
    socket.unlink()
    os.symlink(tmp_path / "shared", socket)  # the next run's, at the same path
    own.remove(socket)
    assert socket.is_symlink()


def test_an_entry_it_did_not_make_or_let_go_of_stays(tmp_path: Path) -> None:
    own, socket = OwnSockets(), tmp_path / "run"
    socket.write_bytes(b"")
    own.remove(socket)  # never noted: a run another process started (`hal task show`)
    own.note(socket)
    own.forget(socket)
    own.remove(socket)
    assert socket.exists()
