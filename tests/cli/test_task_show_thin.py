"""``hal task show ID`` (and ``--json``) in process is answered without click and pydantic
when the store alone answers, and prints byte for byte what the click command prints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.support.thin import FULL, HEAVY, _hal, _plain

from hal9999.cli.output import sanitize
from hal9999.cli.task_control import show
from hal9999.cli.task_show import show_args
from hal9999.cli.task_table import sanitized
from hal9999.home import DB_NAME

IDS = ["t0000000", "t0000004", "t0000010", "full0001", "huge0001", " t0000003 ", "full", "f"]
"""Tasks of ``home``: queued (no runner: the waiting line), running, interrupted, every field
set, a 1 MB prompt and an infinite cost, an id with spaces round it, unique prefixes."""


@pytest.mark.parametrize(
    "argv",
    [["abc"], ["abc", "--json"], ["--json", "abc"], ["--json", "abc", "--json"], [], ["a", "b"],
     ["--help"], ["-x"], ["--", "abc"], ["--json"], ["--jso", "abc"]],
)  # fmt: skip
def test_arguments_are_read_as_click_reads_them_or_left_to_it(argv: list[str]) -> None:
    thin = show_args(argv)
    if thin is None:
        return
    params = show.make_context("show", list(argv)).params
    assert (params["task_id"], params["as_json"]) == thin


@pytest.mark.parametrize(
    "text",
    ["", "plain é ✓ 🚀", "a\nb\tc", "\x1b[31mred", "\x1b[31mred\x1b[0m", "\x1b]0;t\x07x",
     "\x07bell", "\x9bc1", "\u2028sep", "x\x7f", "\r\n"],
)  # fmt: skip
def test_sanitized_is_sanitize(text: str) -> None:
    assert sanitized(text) == sanitize(text)


@pytest.mark.parametrize("task_id", IDS)
def test_the_thin_show_is_the_click_commands_byte_for_byte(home: Path, task_id: str) -> None:
    for form in (("task", "show", task_id), ("task", "show", "--json", task_id)):
        _, loaded = _hal(home, *form)
        assert loaded & HEAVY == set(), form
        thin, full = _plain(home, *form), _plain(home, *form, **FULL)
        assert (thin.returncode, thin.stdout, thin.stderr) == (0, full.stdout, "")
        assert full.returncode == 0
    assert "waiting   no hal process" in _plain(home, "task", "show", "t0000000").stdout


@pytest.mark.parametrize("task_id", ["t", "nope", "", "-t"])
def test_no_task_or_several_are_the_full_paths_to_say(home: Path, task_id: str) -> None:
    _, loaded = _hal(home, "task", "show", task_id)
    assert "click" in loaded
    thin, full = (
        _plain(home, "task", "show", task_id),
        _plain(home, "task", "show", task_id, **FULL),
    )
    assert (thin.returncode, thin.stdout, thin.stderr) == (
        full.returncode,
        full.stdout,
        full.stderr,
    )
    assert thin.returncode != 0


def test_a_task_to_reconcile_or_a_row_to_doubt_goes_to_the_full_path(home: Path) -> None:
    with sqlite3.connect(home / DB_NAME) as conn:
        conn.execute("UPDATE tasks SET runner_pid = ? WHERE id = 't0000004'", (2**22 + 7,))
        conn.execute("UPDATE tasks SET providers = '[1]' WHERE id = 't0000005'")
    conn.close()
    for task_id in ("t0000004", "t0000005"):
        _, loaded = _hal(home, "task", "show", task_id)
        assert "pydantic" in loaded, task_id
    assert "interrupted" in _plain(home, "task", "show", "t0000004").stdout
