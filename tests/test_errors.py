"""The error tree, its docstring drawing and the README's exit-status table agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import hal9999.errors as errors
import hal9999.server.client  # noqa: F401  (registers DaemonUnavailable)
from hal9999.errors import HalError, error_class_for_status, exit_status_for

README = Path(__file__).resolve().parents[1] / "README.md"


def every_error() -> dict[str, type[HalError]]:
    found: dict[str, type[HalError]] = {}
    pending: list[type[HalError]] = [HalError]
    while pending:
        cls = pending.pop()
        assert cls.code not in found or found[cls.code] is cls, f"code {cls.code} used twice"
        found[cls.code] = cls
        pending.extend(cls.__subclasses__())
    return found


def readme_table() -> dict[str, int]:
    """error code -> exit status, from the README's exit-status table."""
    table: dict[str, int] = {}
    for line in README.read_text().splitlines():
        row = re.fullmatch(r"\| (\d+) \| [^|]+ \|(.*)\|", line)
        if row:
            for code in re.findall(r"`([a-z_]+)`", row.group(2)):
                table[code] = int(row.group(1))
    return table


def test_readme_exit_table_matches_the_error_classes() -> None:
    classes = {code: cls.exit_status for code, cls in every_error().items()}
    assert readme_table() == classes


def test_exit_status_for_every_code() -> None:
    for code, cls in every_error().items():
        assert exit_status_for(code) == cls.exit_status
    assert exit_status_for(None) == 0 and exit_status_for("no-such-code") == 1


def test_error_class_for_status_is_the_most_general_class_of_it() -> None:
    assert error_class_for_status(2) is errors.ConfigError
    assert error_class_for_status(3) is errors.NotFoundError
    assert error_class_for_status(1) is HalError and error_class_for_status(77) is HalError
    for cls in every_error().values():
        assert error_class_for_status(cls.exit_status).exit_status == cls.exit_status


def test_errors_docstring_draws_every_class_of_the_module() -> None:
    doc = errors.__doc__ or ""
    drawn = {
        m.group(1): (m.group(2), int(m.group(3)))
        for m in re.finditer(r"(\w+)\s+(\w+)\s+exit (\d+)", doc)
    }
    for code, cls in every_error().items():
        if cls.__module__ == "hal9999.errors":
            assert drawn.get(cls.__name__) == (code, cls.exit_status), cls.__name__


@pytest.mark.parametrize(
    ("args", "code"),
    [(("task", "show", "nosuchtask"), "task_not_found"),
     (("task", "list", "--status", "bogus"), "usage"),
     (("run", "--agent", "nosuchagent", "--repo", "file:///x.git", "x"), "agent_unknown")],
)  # fmt: skip
def test_the_cli_exits_as_the_readme_says(tmp_path: Path, args: tuple[str, ...], code: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HAL_HOME": str(tmp_path / "h"),
           "HAL_NO_DAEMON": "1"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", *args], env=env, capture_output=True, text=True,
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert out.returncode == readme_table()[code], out.stderr
    assert out.stderr.count("hal: error:") == 1 and "Traceback" not in out.stderr
