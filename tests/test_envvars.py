"""``hal9999.envvars.is_env_name`` accepts what ``[A-Za-z_][A-Za-z0-9_]*`` matched (it checks
without ``re`` now: the thin ``hal run`` imports none); ``env_argv`` runs a command
with exactly its environment whatever its path holds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hal9999.envvars import env_argv, is_env_name

NAMES = [
    "A", "_", "__", "a1", "A_B", "1A", "", " A", "A ", "A\n", "A-B", "A.B", "é", "Aé", "A\u0660",
    "ª", "if", "None", "A=B", "\u212a", "A\x00", "_0",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_an_env_name_is_what_the_pattern_matched(name: str) -> None:
    assert is_env_name(name) == bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))


@pytest.mark.parametrize("given", [{"A": "1", "B": "x=y"}, {"A": "1", "PWD": "/given"}])
def test_env_argv_runs_a_command_whose_path_holds_an_equals_sign(
    tmp_path: Path, given: dict[str, str]
) -> None:
    # env takes "/x/a=b/python" for one more assignment: the command would not run at all.
    folder = tmp_path / "a=b"
    folder.mkdir()
    (folder / "printenv").symlink_to("/usr/bin/env")
    argv = env_argv(given, [str(folder / "printenv"), "--null"])
    done = subprocess.run(argv, capture_output=True, cwd=tmp_path, check=True, env={"H": "h"})
    seen = dict(line.split("=", 1) for line in done.stdout.decode().split("\0") if line)
    assert seen == given, "exactly the given environment, nothing of sh's or the host's"


def test_env_argv_of_a_plain_path_is_the_plain_env_line() -> None:
    assert env_argv({"A": "1"}, ["/usr/bin/true", "x=1"], cwd="/w") == [
        "/usr/bin/env", "-i", "-C", "/w", "A=1", "/usr/bin/true", "x=1"
    ]  # fmt: skip
