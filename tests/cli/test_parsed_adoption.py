"""A run adopted after its runner died carries on from the parsed events already recorded:
nothing the agent reported is lost or recorded twice, and usage stays exact."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tests.support.adoption import _fake_claude, _pausing_claude, wait_until
from tests.support.cli import wait_for_status
from tests.support.hal import Hal, events_of, start_hal, tasks_json, tasks_now

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


def test_adopted_run_emits_each_parsed_event_once(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    _pausing_claude(hal_env, demo_repo)
    runner = start_hal(hal_env, demo_repo, "run", "--agent", "claude", "fix it", "--json")
    task = wait_for_status(hal, "running")
    task_id = str(task["id"])
    wait_until(
        lambda: any(e["type"] == "tool_result" for e in events_of(hal, task_id)),
        "the first tool result",
        timeout=60,
    )
    runner.kill()
    runner.communicate()
    assert tasks_json(hal)[0]["status"] == "interrupted"

    resumer = start_hal(hal_env, demo_repo, "task", "resume", task_id, "--json")
    wait_until(lambda: tasks_now(hal)[0]["status"] == "running", "the adoption", timeout=60)
    Path(str(task["session_dir"]), "workspace", "go").touch()
    out, err = resumer.communicate(timeout=60)
    assert resumer.returncode == 0, err
    final = json.loads(out)
    assert final["status"] == "succeeded"
    assert (final["input_tokens"], final["output_tokens"]) == (12052, 48)
    assert final["cost_usd"] == 0.049168

    events = events_of(hal, task_id)
    calls = [e["call_id"] for e in events if e["type"] == "tool_call"]
    results = [e["call_id"] for e in events if e["type"] == "tool_result"]
    assert calls == ["toolu_hal00000", "toolu_hal00100", "toolu_hal00200"]
    assert results == calls
    assert len([e for e in events if e["type"] == "usage"]) == 1
    assert len([e for e in events if e["type"] == "agent_session"]) == 1
    texts = [e["text"] for e in events if e["type"] == "agent_text"]
    assert texts == ["Done: add() now returns a + b and the test passes."]


def test_a_recorded_session_id_that_is_no_plain_token_never_reaches_the_agents_command_line(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The id is the agent's own output: the parsers keep only plain ones now, but one
    # recorded by a hal before that check (or by a plugin's parser) was passed back as an
    # argument of the resumed agent's command, where `--config=...` is an option of the CLI.
    _fake_claude(
        hal_env,
        demo_repo,
        '#!/bin/sh\nprintf "%s\\n" "$@" >> "$HOME/argv"\ncat /workspace/claude-stream.jsonl\n',
    )
    out = hal("run", "--agent", "claude", "fix it", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["agent_session_id"] == "d132bc1e-04d0-4164-aa9f-94c96618212b"
    with sqlite3.connect(Path(hal_env["HAL_HOME"]) / "hal.db") as db:
        db.execute("UPDATE tasks SET agent_session_id = ? WHERE id = ?", ("--config=x", task["id"]))
    db.close()
    out = hal("task", "resume", task["id"], "more", "--json")
    assert out.returncode == 0, out.stderr
    argv = Path(task["session_dir"], "home", "argv").read_text().splitlines()
    assert "--config=x" not in argv
    assert "--resume" not in argv
    said = [e.get("text", "") for e in events_of(hal, task["id"])]
    assert any("not a plain id" in text for text in said), said
