"""What ``hal task list``/``show`` and a run's lines print of text a hive agent chose (the
prompt of a ``run_task`` sub-task) or a user typed: one line each, no control character."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import cast

from hal9999.cli.task_table import TaskSummary, one_line, short, summary, task_table

HOSTILE = "fix it\x1b]52;c;cm0gLXJmIC8K\x07\x1b]0;owned\x07\x9b2J\x1b[8m\r\nfake line"


def row(**fields: object) -> TaskSummary:
    now = time.time()
    base = dict(
        id="abcd1234", status="succeeded", agent="claude", provider="bwrap", prompt="p",
        created_at=now, started_at=now, finished_at=now, exit_code=0, repo="/r", ref=None,
        branch="hal/abcd1234", files_changed=0, input_tokens=0, output_tokens=0, cost_usd=None,
        error_message=None, session_dir="/s", repo_kind="local", issue=None,
    )  # fmt: skip
    return cast(TaskSummary, SimpleNamespace(**{**base, **fields}))


def test_a_prompt_an_agent_wrote_reaches_the_task_table_without_its_escapes() -> None:
    table = task_table([row(prompt=HOSTILE)])
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in table), table
    assert table.count("\n") == 1  # the heading and one row: no forged line


def test_an_agent_with_a_line_break_stays_on_one_line_wherever_it_is_shown() -> None:
    agent = "sh -c 'a\nb'\x1b[2J"
    assert one_line(agent) == "sh -c 'a b'?[2J"
    assert short(agent, 8) == "sh -c '…"
    block = summary(row(agent=agent, repo="/r\x1b]0;t\x07", ref="main\nx"))
    assert "\x1b" not in block and "\x07" not in block
    assert len(block.splitlines()) == 8  # one line a field, none split


def test_a_multi_line_error_stays_under_its_own_field_in_the_summary() -> None:
    # The agent writes into a task's error (git's messages from a clean filter that failed):
    # its later lines were flush left, where "status    succeeded" read as the summary's own.
    error = "collecting failed: git: error: x\nstatus    succeeded (exit 0)\r\nbranch    hal/ok\n"
    block = summary(row(status="failed", exit_code=1, error_message=error))
    fields = [line.split()[0] for line in block.splitlines() if not line.startswith(" ")]
    assert fields == ["task", "status", "agent", "repo", "branch", "duration", "files",
                      "error", "session"], block  # fmt: skip
    assert "          status    succeeded (exit 0)" in block.splitlines()
