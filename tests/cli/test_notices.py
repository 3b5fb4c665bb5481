"""The uncommitted-changes line of ``hal run``: whatever the user's repository holds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hal9999.cli.notices import start_uncommitted


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
