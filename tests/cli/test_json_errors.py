"""A command given ``--json`` that fails prints one JSON object on stdout, in the API's error
shape (``{"error": {"code", "message", "hint"}}``), besides its one line on stderr and with
the same exit status as without ``--json``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import wait_for_status
from tests.support.hal import Hal, one_error_line, start_hal

from hal9999.cli.lazy import COMMANDS


def error_object(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON error object on stdout (asserting the one line on stderr too)."""
    one_error_line(out)
    data = json.loads(out.stdout)  # the whole of stdout: one object, nothing else
    # On one line: a JSON-lines reader (`hal task events --json`) parses it too.
    assert out.stdout.count("\n") == 1, out.stdout
    assert set(data) == {"error"}, data
    assert set(data["error"]) == {"code", "message", "hint"}, data
    return dict(data["error"])


@pytest.mark.parametrize(
    ("args", "code", "status"),
    [
        (("task", "show", "nope"), "task_not_found", 3),
        (("task", "events", "nope"), "task_not_found", 3),
        (("task", "cancel", "nope"), "task_not_found", 3),
        (("run", "--repo", "/nonexistent", "x"), "repo_invalid", 4),
        (("run", "--agent", "true {{prompt_file}}", "--timeout", "0", "x"), "usage", 2),
        (("run",), "usage", 2),  # no prompt
        (("task", "list", "--limit", "x"), "usage", 2),  # refused by click's type
        (("task", "list", "--bogus"), "usage", 2),  # refused by click's parser
        (("pool", "warm", "a" * 100_000), "usage", 2),
        (("trust", "/nonexistent/hal.toml"), None, None),
    ],
)  # fmt: skip
def test_a_failing_json_command_prints_one_error_object(
    hal: Hal, args: tuple[str, ...], code: str | None, status: int | None
) -> None:
    plain = hal(*args)
    assert plain.returncode != 0 and plain.stdout == ""
    out = hal(*args, "--json")
    assert out.returncode == plain.returncode
    assert one_error_line(out) == one_error_line(plain)
    error = error_object(out)
    if code is not None:
        assert (error["code"], out.returncode) == (code, status)
    assert len(error["message"]) < 300  # a huge value is cut, as on the line


def test_the_json_flag_before_its_command_s_other_arguments(hal: Hal) -> None:
    out = hal("task", "show", "--json", "nope")
    assert error_object(out)["message"] == "no task id starts with 'nope'"


def test_a_non_utf8_argument_with_json(hal: Hal) -> None:
    out = hal("task", "show", "--json", "\udcff")
    assert out.returncode == 2
    assert error_object(out)["code"] == "usage"


def test_a_json_word_after_double_dash_is_not_the_flag(hal: Hal) -> None:
    # `--` ends the options: a --json after it is the prompt's text, not the flag.
    out = hal("task", "list", "--limit", "x", "--", "--json")
    assert out.returncode == 2 and out.stdout == ""


def test_every_json_option_notes_itself() -> None:
    """Every command's ``--json`` is :func:`json_option` (which the failure handler reads)."""
    import click

    from hal9999.cli.main import cli
    from hal9999.cli.options import _note_json

    ctx = click.Context(cli)
    found = 0

    def walk(command: click.Command) -> None:
        nonlocal found
        for param in command.params:
            if "--json" in getattr(param, "opts", ()):
                assert param.callback is _note_json, command.name
                found += 1
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub)

    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        walk(command)
    assert found > 30


def test_ctrl_c_of_a_foreground_json_run_prints_the_cancelled_object(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    proc = start_hal(hal_env, demo_repo, "run", "--json", "--agent", "sleep 60", "wait")
    task = wait_for_status(hal, "running")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"task {task['id']} cancelled" in err and "Traceback" not in err
    error = json.loads(out)["error"]
    assert error == {"code": "cancelled", "message": f"task {task['id']} cancelled",
                     "hint": f"session kept at {task['session_dir']}"}  # fmt: skip
