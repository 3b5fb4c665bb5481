"""Subcommands that load on first use, so ``hal --version`` and ``hal --help`` stay light.

Each ``hal`` subcommand lives in a module that registers it on the root group when imported
(``@cli.group()``). Importing all of them at start-up pulled in pydantic, httpx and hal's
model classes for every call, even ``hal --version``. :class:`LazyGroup` imports a command's
modules only when that command is asked for, and ``hal --help`` lists names and short help
from :data:`COMMANDS` without importing anything. ``tests/cli/test_startup.py`` checks that
the table and the registered commands agree, so a command added without a row fails there.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import NamedTuple

import click


class LazyCommand(NamedTuple):
    """Where a subcommand is defined, and its one-line help for ``hal --help``."""

    modules: tuple[str, ...]
    """Imported in order when the command runs; the first registers it on the root group,
    later ones add subcommands to it (``hal task requests``)."""
    short_help: str
    """Exactly the command's own short help (a test keeps them equal)."""
    hidden: bool = False
    """Left out of ``--help``, as the command itself is (``hal task _run``)."""


COMMANDS: Mapping[str, LazyCommand] = {
    "agent": LazyCommand(
        ("hal9999.cli.hive",),
        "Long-lived named agents of the hive (woken by their mail; see docs/hive.md).",
    ),
    "approvals": LazyCommand(
        ("hal9999.cli.approvals",),
        "The hive's approval queue: proposals agents made (spawn, apply a branch, destroy, tool).",
    ),
    "auth": LazyCommand(
        ("hal9999.cli.auth",),
        "Sign in to model vendors; credentials stay on this host (mode 600) and reach the "
        "vendor only through hal's gateway, never a sandbox.",
    ),
    "dashboard": LazyCommand(
        ("hal9999.cli.dashboard",),
        "Print a one-time link that logs a browser in to the dashboard of hal serve.",
    ),
    "doctor": LazyCommand(
        ("hal9999.cli.doctor",), "Check what hal needs and say how to fix what is missing."
    ),
    "hive": LazyCommand(("hal9999.cli.hive",), "The hive as a whole."),
    "image": LazyCommand(
        ("hal9999.cli.image",), "Golden images and snapshots for the qemu provider."
    ),
    "msg": LazyCommand(
        ("hal9999.cli.hive",), "Messages between you (the operator) and the hive's agents."
    ),
    "pool": LazyCommand(("hal9999.cli.pool",), "The warm pool of sandboxes (kept by hal serve)."),
    "questions": LazyCommand(
        ("hal9999.cli.questions",),
        "Questions agents asked: answer them, and the asker's next turn gets the answer.",
    ),
    "run": LazyCommand(
        ("hal9999.cli.run",), "Run PROMPT with a coding agent on a repository, in a sandbox."
    ),
    "sandbox": LazyCommand(
        ("hal9999.cli.pool",),
        "Sandboxes of every provider: list, run a command in one, destroy one.",
    ),
    "serve": LazyCommand(
        ("hal9999.cli.serve",),
        "Run the daemon: queue, warm pool, reaper and API (unix socket + 127.0.0.1).",
    ),
    "status": LazyCommand(
        ("hal9999.cli.serve",),
        "Is the daemon up, and what is it doing? (exit 1 when it is not running)",
    ),
    "task": LazyCommand(
        ("hal9999.cli.task_group",),
        "Inspect and control tasks (ids may be abbreviated to a unique prefix).",
    ),
    "trust": LazyCommand(
        ("hal9999.cli.trust",),
        "Trust ./hal.toml (or PATH): apply all of it, not only the keys that narrow a task.",
    ),
    "vacuum": LazyCommand(
        ("hal9999.cli.hive",),
        "Remove read messages, hive events, turn stats and closed threads past their "
        "retention ([hive]); nothing pending is ever removed.",
    ),
}
"""Every subcommand of ``hal`` and the modules that define it."""

_TASK = ("hal9999.cli.task",)
# Light: through a running daemon they ask it without hal's models (issue 16).
_CONTROL = ("hal9999.cli.task_control",)
TASK_COMMANDS: Mapping[str, LazyCommand] = {
    "_run": LazyCommand(
        _TASK, "Run a queued task, or carry on an adopted one (used by --detach).", hidden=True
    ),
    "attach": LazyCommand(_TASK, "Attach your terminal to the running agent (detach: Ctrl-b d)."),
    "cancel": LazyCommand(
        _CONTROL, "Cancel a task (queued or running): its sandbox goes, its session stays."
    ),
    "diff": LazyCommand(_TASK, "Print the task's patch."),
    "events": LazyCommand(_TASK, "Print the task's events."),
    # Its own light module: `hal task list` reads the store without hal's models (issue 16).
    "list": LazyCommand(("hal9999.cli.task_list",), "List tasks, newest first."),
    "logs": LazyCommand(_TASK, "Print the agent's output."),
    "requests": LazyCommand(
        ("hal9999.cli.requests",),
        "List the model calls of a task (through the LLM gateway): model, status, tokens, cost.",
    ),
    "resume": LazyCommand(
        _TASK, "Run a stopped or finished task again in a new sandbox over the same session."
    ),
    "rm": LazyCommand(_TASK, "Delete a task and its session directory."),
    "show": LazyCommand(_CONTROL, "Show one task."),
    "stop": LazyCommand(
        _CONTROL, "Stop a task: its sandbox goes, its session stays; resume it later."
    ),
}
"""Every subcommand of ``hal task`` and the module that defines it."""


class LazyGroup(click.Group):
    """A click group that imports a subcommand's modules only when that subcommand runs."""

    lazy: Mapping[str, LazyCommand] = COMMANDS

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, loaded or not, without importing any."""
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, importing the modules that register it the first time it is needed."""
        if cmd_name not in self.commands and cmd_name in self.lazy:
            for module in self.lazy[cmd_name].modules:
                importlib.import_module(module)
        return self.commands.get(cmd_name)

    def load_all(self) -> None:
        """Import every subcommand (tests and tools that walk the whole command tree)."""
        for name in self.lazy:
            self.get_command(click.Context(self), name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help`` from the table: nothing is imported to print it."""
        names = self.list_commands(ctx)
        width = max((len(name) for name in names), default=0)
        limit = formatter.width - 6 - width
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is not None:
                if loaded.hidden:
                    continue
                rows.append((name, loaded.get_short_help_str(limit)))
            elif self.lazy[name].hidden:
                continue
            else:
                # Shortened by click's own rule, as a loaded command's help would be.
                stand_in = click.Command(name, help=self.lazy[name].short_help)
                rows.append((name, stand_in.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
