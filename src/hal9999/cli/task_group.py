"""The ``hal task`` group, light: its subcommands load on first use, like ``hal``'s own.

``hal task list`` then imports only :mod:`hal9999.cli.task_list` (no pydantic models, no
daemon client), while ``hal task show`` and the rest import :mod:`hal9999.cli.task`.
"""

from __future__ import annotations

from hal9999.cli.lazy import TASK_COMMANDS, LazyGroup
from hal9999.cli.main import cli


class TaskGroup(LazyGroup):
    """``hal task``: a :class:`LazyGroup` over :data:`TASK_COMMANDS`."""

    lazy = TASK_COMMANDS


@cli.group(cls=TaskGroup)
def task() -> None:
    """Inspect and control tasks (ids may be abbreviated to a unique prefix)."""
