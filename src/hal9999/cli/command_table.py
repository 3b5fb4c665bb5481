"""The table of ``hal``'s subcommands: where each is defined and its one-line help.

Apart from :mod:`hal9999.cli.lazy` (which imports click) so that ``hal --help`` can be
printed from it without click (:mod:`hal9999.cli.root_help`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` is a visible share of a thin command's start
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NamedTuple
else:
    from hal9999.lighttyping import NamedTuple

ROOT_HELP = "hal9999: hand coding work to agents in isolated sandboxes."
"""The help of ``hal`` itself (its group's, and the thin ``hal --help``'s)."""
HELP_OPTIONS = ("-h", "--help")
"""The options that print a command's help."""


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
# Light: through a running daemon they ask it without hal's models.
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
    # Its own light module: `hal task list` reads the store without hal's models.
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
