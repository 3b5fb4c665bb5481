"""One contract suite for every agent output parser.

It runs against every sample in ``samples/`` (``<agent>.<ext>``, hand-written from each CLI's
documented or source-defined format) and every real capture in
``captured/<agent>/stdout.*`` (added by the capture tool; picked up automatically).
"""

from __future__ import annotations

import json
import random
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.agents.base import OutputParser
from hal9999.agents.parsing import JsonLinesParser
from hal9999.agents.registry import available_agents, resolve_agent
from hal9999.events.models import (
    AgentSession,
    AgentText,
    Event,
    Message,
    RawEvent,
    ToolCall,
    ToolResult,
    Usage,
)

HERE = Path(__file__).parent
SAMPLES = sorted(p for p in (HERE / "samples").iterdir() if p.suffix in (".jsonl", ".txt"))
CAPTURED = sorted((HERE / "captured").glob("*/stdout.*"))


def agent_of(path: Path) -> str:
    """The preset a sample or capture belongs to."""
    return path.parent.name if path.parent.parent.name == "captured" else path.stem


EVENT_TYPES = typing.get_args(typing.get_args(Event)[0])
OUTPUTS = [pytest.param(p, id=f"sample-{p.name}") for p in SAMPLES] + [
    pytest.param(p, id=f"captured-{p.parent.name}-{p.name}") for p in CAPTURED
]


def fresh(agent: str) -> OutputParser:
    return resolve_agent(agent).parser()


def run(agent: str, chunks: Iterator[str] | list[str]) -> list[Event]:
    parser = fresh(agent)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def fixed_chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def random_chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 40))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def test_every_preset_has_a_sample() -> None:
    assert sorted(p.stem for p in SAMPLES) == available_agents()


@pytest.mark.parametrize("path", OUTPUTS)
def test_chunking_does_not_change_events(path: Path) -> None:
    agent, text = agent_of(path), path.read_text()
    whole = run(agent, [text])
    assert whole, f"{path.name} yielded no events"
    for size in (1, 2, 3, 7, 64):
        assert run(agent, fixed_chunks(text, size)) == whole, f"chunks of {size}"
    for seed in range(5):
        assert run(agent, random_chunks(text, seed)) == whole, f"random split, seed {seed}"


@pytest.mark.parametrize("path", OUTPUTS)
def test_crlf_line_ends_give_the_same_events(path: Path) -> None:
    agent, text = agent_of(path), path.read_text()
    assert run(agent, fixed_chunks(text.replace("\n", "\r\n"), 5)) == run(agent, [text])


@pytest.mark.parametrize("path", OUTPUTS)
def test_unterminated_last_line_is_parsed_on_close(path: Path) -> None:
    agent, text = agent_of(path), path.read_text()
    assert run(agent, [text.rstrip("\n")]) == run(agent, [text])


@pytest.mark.parametrize("path", OUTPUTS)
def test_noise_between_lines_changes_nothing(path: Path) -> None:
    agent, text = agent_of(path), path.read_text()
    noise = ["", "   ", "Loading…", "{not json", "[1, 2, 3]", '"a string"', "}{", "\x1b[2K\r"]
    lines = text.splitlines()
    mixed = [x for i, line in enumerate(lines) for x in (noise[i % len(noise)], line)]
    assert run(agent, ["\n".join(mixed) + "\n"]) == run(agent, [text])


@pytest.mark.parametrize("agent", available_agents())
def test_unknown_records_are_kept_and_malformed_ones_never_raise(agent: str) -> None:
    unknown = {"type": "hal.test.unknown", "payload": {"n": 1}}
    parser = fresh(agent)
    events = parser.feed(json.dumps(unknown) + "\n") + parser.close()
    if isinstance(parser, JsonLinesParser):
        assert events == [RawEvent(data=unknown)]
    else:
        assert events == []
    malformed = [
        {"type": None},
        {"type": 5, "message": []},
        {"type": "assistant", "message": "not an object"},
        {"type": "user", "message": {"content": [1, None, {"type": "tool_result"}]}},
        {"type": "result", "usage": "nope", "total_cost_usd": "free"},
        {"type": "item.completed", "item": None},
        {"type": "item.started", "item": {"type": "command_execution"}},
        {"type": "turn.completed", "usage": None},
        {"type": "tool_use", "part": {"state": 3}},
        {"type": "step_finish", "part": {"tokens": [1]}},
        {"type": "message", "role": "assistant", "content": {"x": 1}},
        {"type": "message", "message": {"content": [{"type": "toolRequest", "toolCall": 7}]}},
        {"type": "init"},
        {"type": "tool_result", "status": "error", "error": "x"},
        {"type": "complete", "input_tokens": "many"},
    ]
    parser = fresh(agent)
    for record in malformed:
        for event in parser.feed(json.dumps(record) + "\n"):
            assert isinstance(event, EVENT_TYPES)
    assert all(isinstance(event, EVENT_TYPES) for event in parser.close())


@pytest.mark.parametrize("agent", available_agents())
def test_random_garbage_never_raises(agent: str) -> None:
    rng = random.Random(agent)
    alphabet = '{}[]":,\n\r\t abcxyz0123456789\\\x00é'
    for _ in range(200):
        parser = fresh(agent)
        parser.feed("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))))
        parser.close()


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in CAPTURED])
def test_captured_runs_are_understood(path: Path) -> None:
    events = run(agent_of(path), [path.read_text()])
    if path.suffix == ".jsonl":
        assert any(not isinstance(e, RawEvent) for e in events)
    run_json = path.parent / "run.json"
    if run_json.exists() and json.loads(run_json.read_text()).get("fixed") is True:
        # A run that fixed the bug called tools (aider's are its "Applied edit" lines).
        assert any(isinstance(e, ToolCall) for e in events)
    # Every CLI reports what it spent; the JSON ones also name their session.
    assert any(isinstance(e, Usage) and e.input_tokens > 0 for e in events)
    if path.suffix == ".jsonl":
        assert any(isinstance(e, AgentSession) for e in events)


def test_every_captured_cli_is_covered() -> None:
    """The real CLIs the end-to-end tests run each have a captured output here."""
    assert {agent_of(p) for p in CAPTURED} >= {"claude", "codex", "opencode", "aider", "gemini"}


def shell(call_id: str, command: str) -> ToolCall:
    return ToolCall(name="shell", call_id=call_id, input={"command": command})


CLAUDE_SESSION = "7c1d2e4f-3a5b-4c6d-8e9f-0a1b2c3d4e5f"
EXPECTED: dict[str, list[Event]] = {
    "claude.jsonl": [
        AgentSession(session_id=CLAUDE_SESSION),
        RawEvent(
            data={
                "type": "system",
                "subtype": "api_retry",
                "attempt": 1,
                "max_retries": 10,
                "retry_delay_ms": 512.5,
                "error_status": 529,
                "error": "overloaded",
                "session_id": CLAUDE_SESSION,
                "uuid": "a2",
            }
        ),
        AgentText(text="I'll read calc.py first."),
        ToolCall(name="Read", call_id="toolu_01", input={"file_path": "/work/repo/calc.py"}),
        ToolResult(call_id="toolu_01", output="1\tdef add(a, b):\n2\t    return a - b\n"),
        ToolCall(
            name="Edit",
            call_id="toolu_02",
            input={
                "file_path": "/work/repo/calc.py",
                "old_string": "return a - b",
                "new_string": "return a + b",
                "replace_all": False,
            },
        ),
        ToolResult(call_id="toolu_02", output="The file /work/repo/calc.py has been updated."),
        ToolCall(
            name="Bash",
            call_id="toolu_03",
            input={"command": "python -m pytest -q", "description": "Run the tests"},
        ),
        ToolResult(
            call_id="toolu_03",
            output="ModuleNotFoundError: No module named 'pytest'",
            is_error=True,
        ),
        ToolCall(
            name="Bash",
            call_id="toolu_04",
            input={"command": "python -m unittest -q", "description": "Run the tests"},
        ),
        ToolResult(
            call_id="toolu_04",
            output="-" * 70 + "\nRan 1 test in 0.000s\n\nOK",
        ),
        RawEvent(
            data={
                "type": "stream_event",
                "event": {"type": "message_delta"},
                "session_id": CLAUDE_SESSION,
                "uuid": "a13",
            }
        ),
        AgentText(text="Fixed: add() now returns a + b and the test passes."),
        Usage(
            input_tokens=18,
            output_tokens=512,
            cache_read_tokens=20480,
            cache_write_tokens=4210,
            cost_usd=0.04213,
            total=True,
        ),
    ],
    "codex.jsonl": [
        AgentSession(session_id="0199a213-81c0-7800-8aa1-bbab2a035a53"),
        shell("item_1", "/bin/bash -lc 'cat calc.py'"),
        ToolResult(call_id="item_1", output="def add(a, b):\n    return a - b\n"),
        ToolCall(
            name="apply_patch",
            call_id="item_2",
            input={
                "changes": [
                    {"path": "/work/repo/calc.py", "kind": "update"},
                    {"path": "/work/repo/NOTES.md", "kind": "add"},
                ]
            },
        ),
        ToolResult(call_id="item_2", output="update /work/repo/calc.py\nadd /work/repo/NOTES.md"),
        shell("item_3", "/bin/bash -lc 'python -m pytest -q'"),
        ToolResult(
            call_id="item_3", output="/usr/bin/python: No module named pytest\n", is_error=True
        ),
        ToolCall(name="docs.search", call_id="item_5", input={"q": "unittest"}),
        ToolResult(call_id="item_5", output="python -m unittest"),
        shell("item_6", "/bin/bash -lc 'python -m unittest -q'"),
        ToolResult(call_id="item_6", output="OK\n"),
        RawEvent(
            data={
                "type": "item.completed",
                "item": {
                    "id": "item_4",
                    "type": "todo_list",
                    "items": [
                        {"text": "Fix add()", "completed": True},
                        {"text": "Run tests", "completed": True},
                    ],
                },
            }
        ),
        Message(
            level="warning",
            text="Model metadata for `gpt-test` not found. Defaulting to fallback metadata.",
        ),
        AgentText(text="Fixed `add` in calc.py; the unit test passes."),
        Message(level="error", text="Reconnecting... 1/5"),
        Usage(input_tokens=315, output_tokens=122, cache_read_tokens=24448, total=True),
        RawEvent(
            data={"type": "thread.archived", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"}
        ),
    ],
    "opencode.jsonl": [
        AgentSession(session_id="ses_dfdc967d7ffeJ2A3dCvPIirXK4"),
        AgentText(text="I'll list the files."),
        ToolCall(
            name="bash", call_id="call_1", input={"command": "ls", "description": "List files"}
        ),
        ToolResult(call_id="call_1", output="(no output)"),
        Usage(input_tokens=1200, output_tokens=40, cost_usd=0.0),
        ToolCall(
            name="edit",
            call_id="call_2",
            input={"filePath": "/work/repo/calc.py", "oldString": "a - b", "newString": "a + b"},
        ),
        ToolResult(
            call_id="call_2",
            output="File /work/repo/calc.py has been modified since it was last read",
            is_error=True,
        ),
        Message(level="error", text="Rate limit exceeded"),
        RawEvent(
            data={
                "type": "snapshot",
                "timestamp": 1795333464500,
                "sessionID": "ses_dfdc967d7ffeJ2A3dCvPIirXK4",
                "part": {"type": "snapshot", "snapshot": "abc"},
            }
        ),
        AgentText(text="Done: the directory is empty."),
        Usage(input_tokens=1200, output_tokens=40, cost_usd=0.0),
    ],
    "gemini.jsonl": [
        AgentSession(session_id="4704edc5-a2bc-4b52-a394-5775b50fae51"),
        AgentText(text="I'll look at `calc.py` first."),
        ToolCall(
            name="read_file",
            call_id="read_file-1763797588-0",
            input={"absolute_path": "/work/repo/calc.py"},
        ),
        ToolResult(call_id="read_file-1763797588-0", output="def add(a, b):\n    return a - b\n"),
        ToolCall(
            name="replace",
            call_id="replace-1763797589-1",
            input={"file_path": "/work/repo/calc.py", "old_string": "a - b", "new_string": "a + b"},
        ),
        ToolResult(call_id="replace-1763797589-1", output=""),
        ToolCall(
            name="run_shell_command",
            call_id="run_shell_command-1763797590-2",
            input={"command": "python -m pytest -q"},
        ),
        ToolResult(
            call_id="run_shell_command-1763797590-2",
            output="Command exited with code 1: No module named pytest",
            is_error=True,
        ),
        Message(level="warning", text="Loop detection: repeated tool calls"),
        AgentText(text="Fixed `add`: it now returns a + b."),
        RawEvent(data={"type": "checkpoint", "timestamp": "2026-11-22T07:46:28.013Z", "id": "c1"}),
        Usage(input_tokens=6900, output_tokens=520, cache_read_tokens=8000, total=True),
    ],
    "goose.jsonl": [
        AgentText(text="Let me look at the code."),
        ToolCall(name="developer__shell", call_id="toolu_A", input={"command": "cat calc.py"}),
        ToolResult(call_id="toolu_A", output="def add(a, b):\n    return a - b\n"),
        ToolCall(
            name="developer__text_editor",
            call_id="toolu_B",
            input={
                "command": "str_replace",
                "path": "/work/repo/calc.py",
                "old_str": "a - b",
                "new_str": "a + b",
            },
        ),
        ToolResult(call_id="toolu_B", output="The file /work/repo/calc.py has been edited"),
        ToolCall(
            name="developer__shell", call_id="toolu_C", input={"command": "python -m pytest -q"}
        ),
        ToolResult(call_id="toolu_C", output="Command failed with exit code 1", is_error=True),
        AgentText(text="Fixed: add() returns a + b."),
        RawEvent(data={"type": "model_change", "model": "claude-haiku-4-5", "mode": "lead_worker"}),
        Usage(
            input_tokens=20810,
            output_tokens=530,
            cache_read_tokens=15000,
            cache_write_tokens=2100,
            cost_usd=0.0312,
            total=True,
        ),
    ],
    "aider.txt": [
        Usage(input_tokens=2300, output_tokens=85, cost_usd=0.0053),
        ToolCall(name="edit", input={"path": "calc.py"}),
        Usage(
            input_tokens=12000,
            output_tokens=1200,
            cache_read_tokens=4500,
            cache_write_tokens=1100,
            cost_usd=0.04,
        ),
        Usage(input_tokens=116, output_tokens=30),
    ],
}


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in SAMPLES])
def test_sample_yields_exactly_the_expected_events(path: Path) -> None:
    assert run(agent_of(path), [path.read_text()]) == EXPECTED[path.name]
