"""A database another process keeps locked past the busy timeout is one clear line, not an
internal error (on a loaded machine with many runners writing, a write can wait that long)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from hal9999.cli.main import cli
from hal9999.errors import exit_status_for
from hal9999.store import Store


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("database is locked"), sqlite3.OperationalError("database is busy")],
)
def test_a_locked_database_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: sqlite3.OperationalError
) -> None:
    def locked(self: Store, task_id: str) -> None:
        raise error

    monkeypatch.setattr(Store, "find_task", locked)
    env = {"HAL_HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    done = CliRunner().invoke(cli, ["task", "stop", "abcdefgh"], env=env)
    assert done.exit_code == exit_status_for("home_unusable"), done.output
    [line] = done.output.splitlines()
    assert line.startswith("hal: error: hal's database stayed locked by another hal process")
    assert "run the command again" in line and "internal" not in line
    assert not list((tmp_path / "home" / "run").glob("hal-crash-*"))


def test_another_database_error_is_still_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Store, task_id: str) -> None:
        raise sqlite3.OperationalError("no such column: bogus")

    monkeypatch.setattr(Store, "find_task", broken)
    env = {"HAL_HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    done = CliRunner().invoke(cli, ["task", "stop", "abcdefgh"], env=env)
    assert done.exit_code == 1
    assert "internal error (OperationalError: no such column: bogus)" in done.output
