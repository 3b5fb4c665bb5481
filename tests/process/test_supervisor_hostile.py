"""The real supervisor, as a process, under an agent whose output is written to hurt it: the
run ends with its exit status, usage is read, no secret reaches the log or the parsed events,
and one huge line costs bounded memory."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from hal9999.events.models import AgentSession, ToolCall, Usage
from hal9999.process.launch import SUPERVISOR
from hal9999.tasks.context import Totals
from hal9999.tasks.output import read_parsed

SECRET = "sk-hal-Zq8xW3pL0vN7"
"""The run's API key, given to the supervisor as a secret variable."""


def _supervise(tmp_path: Path, script: str) -> tuple[int, int]:
    """Run ``script`` under the supervisor with the claude parser and SECRET to mask; its
    exit status and the supervisor's peak resident memory in KiB."""
    argv = [*SUPERVISOR, "--log", str(tmp_path / "agent.log"), "--exit", str(tmp_path / "exit"),
            "--mask-var", "API_KEY", "--parser", "claude",
            "--events", str(tmp_path / "parsed.jsonl"), "--",
            sys.executable, "-c", script]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", ""), "API_KEY": SECRET}
    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss


def test_one_line_of_countless_values_costs_bounded_memory(tmp_path: Path) -> None:
    # 15 MB of `[{},{},...]` on one line: the supervisor held 1.2 GB for it (json.loads'
    # objects and their copies on the way to the events file), outside the sandbox's limits.
    result = json.dumps({"type": "result", "usage": {"input_tokens": 7, "output_tokens": 3}})
    script = (
        "import sys; w = sys.stdout.write; "
        "w('{\"type\": \"x\", \"data\": [' + '{},' * 5_000_000 + '{}]}\\n'); "
        f"w({result!r} + '\\n')"
    )
    status, peak_kib = _supervise(tmp_path, script)
    assert status == 0 and (tmp_path / "exit").read_text() == "0\n"
    assert peak_kib < 400 * 1024, f"the supervisor peaked at {peak_kib >> 10} MiB"
    records, _ = read_parsed(tmp_path / "parsed.jsonl", 0)
    assert [event.type for _, event, _ in records] == ["usage"]


def test_hostile_bytes_and_a_split_encoded_secret_end_in_a_clean_run(tmp_path: Path) -> None:
    forms = [SECRET, base64.b64encode(SECRET.encode()).decode(), SECRET.encode().hex(),
             urllib.parse.quote(SECRET, safe=""), " ".join(SECRET)]  # fmt: skip
    text = " | ".join(forms)
    record = {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)  # JSON decodes it to the secret
    call = {"type": "tool_use", "name": "Bash", "id": "t1", "input": {"command": "echo @"}}
    tool = json.dumps({"type": "assistant", "message": {"content": [call]}}).replace("@", escaped)
    line = json.dumps(record)
    result = json.dumps({"type": "result", "usage": {"input_tokens": 7, "output_tokens": 3}})
    # Written a few bytes at a time, so every secret and escape sequence is split.
    script = (
        "import os, sys, time\n"
        f"data = {line!r}.encode() + b'\\n' + {tool!r}.encode() + b'\\n'\n"
        "data += b'\\xff\\xfe\\x00 \\xed\\xa0\\x80 '\n"
        "data += b'\\x1b]52;c;ZXZpbA==\\x07 \\x1b]0;pwned\\x07\\n'\n"
        'data += b\'{"type": "user", "x": "\\\\ud800\\\\u0000"}\\n\'\n'
        f"data += {result!r}.encode() + b'\\n'\n"
        "for i in range(0, len(data), 5):\n"
        "    os.write(1, data[i:i + 5])\n"
        "    time.sleep(0.0005)\n"
    )
    status, _ = _supervise(tmp_path, script)
    assert status == 0 and (tmp_path / "exit").read_text() == "0\n"
    log = (tmp_path / "agent.log").read_text(errors="replace")
    parsed = (tmp_path / "parsed.jsonl").read_text()
    for form in forms:
        assert form not in log and form not in parsed, form
    records, _ = read_parsed(tmp_path / "parsed.jsonl", 0)
    types = [event.type for _, event, _ in records]
    assert types == ["agent_text", "tool_call", "usage"], types
    tool_call = records[1][1]
    assert isinstance(tool_call, ToolCall) and tool_call.input == {"command": "echo [REDACTED]"}
    assert "hal: the output parser failed" not in log


def test_past_the_cap_usage_is_summed_and_errors_are_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the parsed-events cap, usage, session and message events were still written one
    # by one: an agent printing a step or an error a line grew the events file, the task's
    # events and the store's index without end. Now they are folded (usage), held (the
    # session) or few (messages), and the run's totals are the same.
    from hal9999.process import parsedevents, supervisor

    monkeypatch.setattr(parsedevents, "PARSED_CAP", 2000)
    monkeypatch.setattr(parsedevents, "MESSAGES_PAST_CAP", 3)
    step = {"type": "step_finish", "part": {"cost": 0.5, "tokens": {"input": 2, "output": 1}}}
    lines = [json.dumps({"type": "text", "sessionID": f"s{n}", "part": {"text": "hi"}})
             for n in range(20)]  # fmt: skip
    lines += [json.dumps(step), json.dumps({"type": "error", "error": {"name": "boom"}})] * 500
    script = f"import sys; sys.stdout.write({chr(10).join(lines)!r} + '\\n')"
    parsed = tmp_path / "parsed.jsonl"
    argv = ["--log", str(tmp_path / "agent.log"), "--exit", str(tmp_path / "exit"),
            "--parser", "opencode", "--events", str(parsed),
            "--", sys.executable, "-c", script]  # fmt: skip
    assert supervisor.supervise(argv) == 0
    events = [event for _, event, _ in read_parsed(parsed, 0)[0]]
    assert len(events) < 80, len(events)
    totals = Totals()
    for event in events:
        if isinstance(event, Usage):
            totals.add(event)
    assert (totals.input_tokens, totals.output_tokens, totals.cost_usd) == (1000, 500, 250.0)
    assert [e.type for e in events].count("message") <= 3 + 10  # the cap's and before it
    sessions = [e for e in events if isinstance(e, AgentSession)]
    assert sessions[-1].session_id == "s19"
    assert "keep only usage (summed)" in (tmp_path / "agent.log").read_text()


def test_a_total_past_the_cap_replaces_the_steps_before_it_as_the_runner_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal9999.process import parsedevents

    monkeypatch.setattr(parsedevents, "PARSED_CAP", 1)
    events = parsedevents.ParsedEvents("claude", str(tmp_path / "parsed.jsonl"), None)
    figures = [Usage(input_tokens=5), Usage(input_tokens=100, total=True, cost_usd=1.0),
               Usage(input_tokens=7, cost_usd=0.25), Usage(input_tokens=1)]  # fmt: skip
    expected = Totals()
    for n, usage in enumerate(figures):
        expected.add(usage)
        events._run(lambda parser, usage=usage: [usage], n)  # type: ignore[misc]
    events.close(10)
    got = Totals()
    for _, event, _ in read_parsed(tmp_path / "parsed.jsonl", 0)[0]:
        got.add(event)  # type: ignore[arg-type]
    assert (got.input_tokens, got.cost_usd) == (expected.input_tokens, expected.cost_usd)
    assert (got.input_tokens, got.cost_usd) == (108, 1.25)


def test_an_event_longer_than_a_read_is_read_whole(tmp_path: Path) -> None:
    # A text field keeps 256 Ki characters, but as JSON a non-ASCII one takes 6 bytes: a
    # tool's output of 200,000 CJK characters was a 1.2 MB record, past the 1 MiB the
    # reader took at once, and the event was dropped without a word.
    from hal9999.process.parsedevents import ParsedEvents

    path = tmp_path / "parsed.jsonl"
    parsed = ParsedEvents("claude", str(path), None)
    text = "漢字" * 100_000
    block = {"type": "tool_result", "tool_use_id": "t1", "content": text}
    record = {"type": "user", "message": {"content": [block]}}
    result = {"type": "result", "usage": {"input_tokens": 5}}
    parsed.feed(json.dumps(record, ensure_ascii=False) + "\n" + json.dumps(result) + "\n", 10)
    parsed.close(10)
    assert path.stat().st_size > 1 << 20
    records, end = read_parsed(path, 0)
    assert [event.type for _, event, _ in records] == ["tool_result", "usage"]
    assert records[0][1].output == text  # type: ignore[union-attr]
    assert end == path.stat().st_size


def test_an_event_too_long_to_record_is_noted_and_a_flood_of_them_briefly(
    tmp_path: Path,
) -> None:
    # A parsed record over 8 MiB (40 fields of 256 Ki characters, each 1.5 MB as JSON) was
    # written, then skipped by the reader without a word. Now it is not written, the log
    # says so with its size, and a flood of them is a few lines and a count.
    from hal9999.process.parsedevents import MAX_PARSED_RECORD, SKIPPED_NOTES, ParsedEvents

    path = tmp_path / "parsed.jsonl"
    parsed = ParsedEvents("claude", str(path), None)
    huge = ToolCall(name="edit", input={f"f{n}": "漢" * 300_000 for n in range(40)})
    for n in range(SKIPPED_NOTES + 5):
        parsed._run(lambda parser: [huge], n)
        parsed._run(lambda parser: [Usage(input_tokens=1)], n)
    parsed.close(99)
    records, end = read_parsed(path, 0)
    assert [event.type for _, event, _ in records] == ["usage"] * (SKIPPED_NOTES + 5)
    assert end == path.stat().st_size
    notes = [p for p in parsed.problems if "not recorded" in p]
    assert len(notes) == SKIPPED_NOTES + 1, parsed.problems
    size = int(notes[0].split(" event of ")[1].split()[0])
    assert size > MAX_PARSED_RECORD and "tool_call" in notes[0]
    assert notes[-1] == "hal: 5 more parsed events were not recorded\n"
