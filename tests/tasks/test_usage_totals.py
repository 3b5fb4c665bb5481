"""A run's token totals stay within what the store holds, however many steps the agent
reports: each step is bounded by its parser, and so is their sum."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from hal9999.agents.parsing import MAX_COUNT, add_counts
from hal9999.events.models import Usage
from hal9999.hive import stats
from hal9999.store import Store, TaskRecord
from hal9999.tasks.context import Totals

STEP = Usage(input_tokens=MAX_COUNT, cache_read_tokens=MAX_COUNT, output_tokens=MAX_COUNT)
"""The largest step a parser reports (opencode reports one a model call)."""


def test_a_runs_totals_are_bounded_however_many_steps() -> None:
    # The sum had no bound: 9.3 million such steps (a few hundred MB of output) passed
    # SQLite's 2**63, and the run's end failed writing the task's row.
    totals = Totals()
    for _ in range(3):
        totals.add(STEP)
    assert totals.input_tokens == totals.output_tokens == MAX_COUNT
    sqlite3.connect(":memory:").execute("SELECT ?", (totals.input_tokens,))
    assert add_counts(MAX_COUNT, MAX_COUNT) == MAX_COUNT and add_counts(2, 3) == 5


def test_a_hive_turns_figures_from_the_agents_steps_are_bounded(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    steps = [STEP.model_copy(update={"seq": seq, "cache_write_tokens": MAX_COUNT})
             for seq in range(1, 4)]  # fmt: skip
    events.write_text("".join(step.model_dump_json() + "\n" for step in steps))
    task = TaskRecord(id="t1", prompt="p", agent="claude", provider="bwrap", process_manager="tmux",
                      repo="/r", repo_kind="local", branch="b", status="succeeded",
                      created_at=0, session_dir=str(tmp_path))  # fmt: skip
    with Store(tmp_path / "hal.db") as store:
        found = stats.measure(store, task, events, time.time() - 5, after_seq=0)
    assert found["usage_source"] == "agent"
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        assert found[name] == MAX_COUNT, name
