"""Command-line option types that check values with the config's own field rules.

``--timeout inf`` and ``timeout_s = inf`` are refused by the same rule (the field types of
:mod:`hal9999.config`), so the command line, config files and ``HAL_*`` agree.
"""

from __future__ import annotations

from typing import Any

import click

from hal9999.errors import UsageError
from hal9999.tasks.state import TaskStatus
from hal9999.values import Name, TimeoutSeconds, check_value


class ModelChecked(click.ParamType[Any]):
    """A click type validated by a config field type (pydantic), worded like config errors."""

    def __init__(self, kind: Any, name: str, base: click.ParamType[Any] = click.STRING) -> None:
        self.kind = kind
        self.name = name
        self.base = base

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse with ``base``, then check with the field type."""
        parsed = self.base.convert(value, param, ctx)
        try:
            return check_value(self.kind, parsed, self.name)
        except UsageError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


TIMEOUT = ModelChecked(TimeoutSeconds, "seconds", click.FLOAT)
"""``--timeout``: a finite number of seconds greater than 0."""
NAME = ModelChecked(Name, "name")
"""``--agent``, ``--provider``, ``--process-manager``: not empty."""
RETRIES = click.IntRange(0, 100)
"""``--retries``: how often an agent failure is retried."""
PRIORITY = click.IntRange(-1_000_000, 1_000_000)
"""``--priority``: bounded so it fits the store's integer column."""
LIMIT = click.IntRange(1, 1_000_000)
"""``--limit`` of listings."""
STATUS = click.Choice([s.value for s in TaskStatus])
"""``--status`` filters: only states a task can be in."""
