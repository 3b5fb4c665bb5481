"""hal runs on Linux only and says so in one line anywhere else, before doing any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hal import private_env

AS_IF = "import sys; sys.platform = {platform!r}; sys.argv = ['hal', *sys.argv[1:]]; " \
    "from hal9999.cli.entry import main; main()"  # fmt: skip
"""The ``hal`` console script as it would start on another platform."""


def hal_on(platform: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = AS_IF.format(platform=platform)
    env = private_env(tmp_path / "home", tmp_path / "config")
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("platform", ["darwin", "win32", "freebsd14"])
def test_a_command_off_linux_is_one_line_naming_the_platform(platform: str, tmp_path: Path) -> None:
    out = hal_on(platform, tmp_path, "task", "list")
    assert out.returncode == 2, out
    assert out.stderr == (
        f"hal: error: hal runs on Linux only, not on {platform} (run hal on a Linux host, "
        "or in a Linux VM (lima, WSL 2) with hal installed there)\n"
    )
    assert out.stdout == ""
    assert not (tmp_path / "home").exists()  # refused before anything was made


def test_json_output_off_linux_is_the_error_object(tmp_path: Path) -> None:
    out = hal_on("darwin", tmp_path, "doctor", "--json")
    assert out.returncode == 2, out
    assert json.loads(out.stdout)["error"]["code"] == "config_invalid"


def test_the_version_is_printed_anywhere(tmp_path: Path) -> None:
    out = hal_on("darwin", tmp_path, "--version")
    assert out.returncode == 0, out
    assert out.stdout.startswith("hal, version ")


def test_linux_runs_as_before(tmp_path: Path) -> None:
    out = hal_on(sys.platform, tmp_path, "task", "list", "--json")
    assert out.returncode == 0, out
    assert json.loads(out.stdout) == []
