"""Ready-made Scripts that drive each real agent CLI through a one-line bug fix.

Tool names and input shapes were read from the `tools` array each CLI sent (see
tests/agents/captured/README.md):

    claude    Anthropic  Read{file_path} Edit{file_path,old_string,new_string} Bash{command}
    codex     Responses  exec_command{cmd} (function) and apply_patch (custom, freeform patch)
    opencode  Chat       read{filePath} edit{filePath,oldString,newString} bash{command}
    gemini    Gemini     read_file{file_path} replace{file_path,instruction,old_string,
                         new_string} run_shell_command{command}
    aider     Chat       no tools: one reply holding a SEARCH/REPLACE block (`--edit-format
                         diff`; an unknown model name selects the `whole` format)

Claude Code, opencode and the Gemini CLI want absolute paths, so their scripts need the repo
directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .script import Script, ToolCall, Turn

PROMPT = "Fix the bug in calc.py so that the test in test_calc.py passes. Then say done."
"""The task every captured run was given; aider's Script uses it as its anchor."""


@dataclass(frozen=True)
class BugFix:
    """A tiny repo with a planted one-line bug, and the line that fixes it."""

    files: dict[str, str]
    file: str
    old: str
    new: str
    test_command: str

    def write(self, repo: Path) -> None:
        """Create the buggy files under `repo`."""
        for name, text in self.files.items():
            (repo / name).write_text(text)

    def is_fixed(self, repo: Path) -> bool:
        """True when the fix line is in place and the bug line is gone."""
        text = (repo / self.file).read_text()
        return self.new in text and self.old not in text


CALC_BUG = BugFix(
    files={
        "calc.py": 'def add(a, b):\n    """Return the sum of a and b."""\n    return a - b\n',
        "test_calc.py": (
            "import unittest\n\nfrom calc import add\n\n\n"
            "class AddTest(unittest.TestCase):\n"
            "    def test_add(self):\n"
            "        self.assertEqual(add(2, 3), 5)\n\n\n"
            'if __name__ == "__main__":\n'
            "    unittest.main()\n"
        ),
    },
    file="calc.py",
    old="    return a - b",
    new="    return a + b",
    test_command="python3 -m unittest -q test_calc",
)
"""`add` subtracts; the test expects 2 + 3 == 5."""

DONE = "Done: add() now returns a + b and the test passes."
"""The closing text every script ends with."""


@dataclass(frozen=True)
class ScriptBuilder:
    """Builds the bug-fix Script for one agent."""

    build: Callable[[BugFix, Path], Script]
    notes: str = field(default="")


def _claude(fix: BugFix, repo: Path) -> Script:
    path = str(repo / fix.file)
    return Script(
        turns=[
            Turn.call("Read", file_path=path),
            Turn.call("Edit", file_path=path, old_string=fix.old, new_string=fix.new),
            Turn.call("Bash", command=fix.test_command, description="Run the tests"),
            Turn.say(DONE),
        ],
    )


def _codex(fix: BugFix, repo: Path) -> Script:
    patch = (
        f"*** Begin Patch\n*** Update File: {fix.file}\n@@\n-{fix.old}\n+{fix.new}\n*** End Patch\n"
    )
    return Script(
        turns=[
            Turn.call("exec_command", cmd=f"cat {fix.file}"),
            Turn.calls(ToolCall("apply_patch", patch, kind="custom")),
            Turn.call("exec_command", cmd=fix.test_command),
            Turn.say(DONE),
        ],
        model="gpt-5.5",
    )


def _opencode(fix: BugFix, repo: Path) -> Script:
    path = str(repo / fix.file)
    return Script(
        turns=[
            Turn.call("read", filePath=path),
            Turn.call("edit", filePath=path, oldString=fix.old, newString=fix.new),
            Turn.call("bash", command=fix.test_command),
            Turn.say(DONE),
        ],
    )


def _gemini(fix: BugFix, repo: Path) -> Script:
    path = str(repo / fix.file)
    return Script(
        turns=[
            Turn.call("read_file", file_path=path),
            Turn.call(
                "replace",
                file_path=path,
                instruction="Make add() return the sum instead of the difference.",
                old_string=fix.old,
                new_string=fix.new,
            ),
            Turn.call("run_shell_command", command=fix.test_command, description="Run the tests"),
            Turn.say(DONE),
        ],
        model="gemini-2.5-pro",
    )


def _aider(fix: BugFix, repo: Path) -> Script:
    block = (
        f"{fix.file}\n"
        "```python\n"
        "<<<<<<< SEARCH\n"
        f"{fix.old}\n"
        "=======\n"
        f"{fix.new}\n"
        ">>>>>>> REPLACE\n"
        "```\n"
    )
    return Script(
        turns=[Turn.say(f"`add` subtracts instead of adding.\n\n{block}")],
        final=Turn.say(DONE),
        # Commit-message requests do not carry the prompt; give them a usable message.
        side_reply=Turn.say("fix: make add() return the sum"),
        anchor=PROMPT,
    )


SCRIPTS: dict[str, ScriptBuilder] = {
    "claude": ScriptBuilder(_claude, "Read before Edit: Claude Code refuses an unread edit"),
    "codex": ScriptBuilder(_codex, "needs a model slug codex knows (gpt-5.5) for apply_patch"),
    "opencode": ScriptBuilder(_opencode),
    "aider": ScriptBuilder(_aider, "run with --edit-format diff"),
    "gemini": ScriptBuilder(_gemini, "replace needs `instruction`; paths are absolute"),
}
"""Agent name (as in the `hal9999.agents` entry points) to its bug-fix Script builder."""


def fix_bug_script(agent: str, repo: Path, fix: BugFix = CALC_BUG) -> Script:
    """The Script that makes `agent` read `fix.file`, apply the fix, run the test, say done."""
    try:
        builder = SCRIPTS[agent]
    except KeyError:
        raise ValueError(f"no bug-fix script for {agent!r}; known: {sorted(SCRIPTS)}") from None
    return builder.build(fix, repo)
