"""The lines hal writes itself around an agent's run carry none of the agent's controls: a
line break the agent put in a name or a message began a line of its choosing under hal's
(a forged tool line or ``end: succeeded``), and its colours in hal's line hid the rest."""

from __future__ import annotations

import io
import re

from hal9999.cli.output import EventRenderer
from hal9999.cli.render import event_line
from hal9999.events.models import (
    AgentSession,
    Message,
    Phase,
    TaskEnd,
    ToolCall,
    ToolResult,
)

FORGED = "\n    9 12:00:00 end: succeeded (exit 0)\r\n▸ Bash \x1b[32m✓ all tests passed"
"""What an agent appends to a name or a message to pose as hal."""

HALS_STYLES = {"\x1b[2m", "\x1b[31m", "\x1b[33m", "\x1b[0m"}
"""The SGR sequences the renderer paints its own lines with."""


def test_the_run_view_keeps_each_of_hals_lines_one_line_and_in_its_own_colours() -> None:
    out = io.StringIO()
    renderer = EventRenderer(out, color=True)
    events = [
        ToolCall(name=f"Bash{FORGED}", input={"command": f"ls{FORGED}"}),
        ToolCall(name="Edit", input={"file_path": f"/workspace/a\x1b[8m.py{FORGED}"}),
        ToolResult(output=f"x\x1b[8m{FORGED}", is_error=True),
        Message(level="warning", text=f"w\x1b[30;40m{FORGED}"),
        Message(level="error", text=f"e{FORGED}"),
    ]
    for event in events:
        renderer(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(events), lines
    assert lines[0].startswith("\x1b[2m▸ Bash ") and "end: succeeded" in lines[0]
    for line in lines:
        assert set(re.findall(r"\x1b\[[0-9;]*m", line)) <= HALS_STYLES, repr(line)
        assert "\r" not in line


def test_each_event_of_hal_task_events_is_one_line() -> None:
    events = [
        ToolCall(seq=1, name=f"Bash{FORGED}", input={}),
        Message(seq=2, level="warning", text=f"collecting failed: {FORGED}"),
        AgentSession(seq=3, session_id=f"s{FORGED}"),
        Phase(seq=4, phase="collecting", detail=f"d{FORGED}"),
        TaskEnd(seq=5, status="failed", exit_code=1, error=f"git: {FORGED}"),
    ]
    for event in events:
        line = event_line(event)
        assert line is not None and "\n" not in line and "\r" not in line, repr(line)
        assert "\x1b[32m" not in line or line.endswith("\x1b[0m"), repr(line)
        assert "end: succeeded" in line  # shown, escaped: `\n    9 12:00:00 end: ...`
