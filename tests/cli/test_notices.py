"""The uncommitted-changes line of ``hal run``: whatever the user's repository holds."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hal9999.cli.notices import STATUS_TIMEOUT_S, start_uncommitted


def test_a_file_name_that_is_not_utf8_is_counted_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With core.quotePath off, git prints a name's own bytes; a Latin-1 name is not UTF-8.
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "core.quotePath", "false"], check=True)
    with open(os.path.join(os.fsencode(repo), b"caf\xe9.txt"), "wb") as file:
        file.write(b"x")
    monkeypatch.chdir(repo)
    notice = start_uncommitted(str(repo), None).notice()
    assert notice is not None and "1 uncommitted change(s)" in notice


def test_a_status_that_ended_in_time_is_read_however_late_hal_asks(tmp_path: Path) -> None:
    # On a loaded machine the full path's imports can outlast the check's deadline while
    # git ended long before: its line must not be dropped (seen as a thin and a full client
    # that printed different lines for one run in tests/cli/test_daemon_run_e2e.py).
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "left.txt").write_text("x")
    pending = start_uncommitted(str(repo), None)
    assert pending.proc is not None
    pending.proc.wait()
    pending.deadline -= STATUS_TIMEOUT_S + 1  # hal got here after the deadline
    notice = pending.notice()
    assert notice is not None and "1 uncommitted change(s)" in notice


def test_a_status_still_running_at_the_deadline_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\nsleep 30\n")  # its child keeps the pipe open
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    pending = start_uncommitted(str(repo), None)
    assert pending.proc is not None
    pending.deadline = time.monotonic() + 0.2
    started = time.monotonic()
    assert pending.notice() is None
    assert time.monotonic() - started < 10, "waited for the orphaned child's pipe"
