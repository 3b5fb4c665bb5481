"""Command-line option types that check values with the config's own field rules.

``--timeout inf`` and ``timeout_s = inf`` are refused by the same rule (the field types of
:mod:`hal9999.config`), so the command line, config files and ``HAL_*`` agree.
"""

from __future__ import annotations

from typing import Any

import click
from pydantic import ValidationError

from hal9999.errors import UsageError
from hal9999.spec import Resources
from hal9999.tasks.state import TaskStatus
from hal9999.values import Name, TimeoutSeconds, check_value, describe


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


class ResourceLimit(click.ParamType[Any]):
    """A resource limit option (``--cpus``, ``--memory``), checked by :class:`Resources`."""

    def __init__(self, field: str, base: click.ParamType[Any]) -> None:
        self.field = field
        self.base = base
        self.name = field

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse with ``base``, then check with the model's own validator."""
        parsed = self.base.convert(value, param, ctx)
        try:
            Resources.model_validate({self.field: parsed})
        except ValidationError as exc:
            self.fail(describe(exc.errors()[0]), param, ctx)
        return parsed


CPUS = ResourceLimit("cpus", click.FLOAT)
"""``--cpus``: 0 (no limit) or a real quota."""
MEMORY_MB = ResourceLimit("memory_mb", click.INT)
"""``--memory``: 0 (no limit) or MiB from the minimum."""
COUNT = click.IntRange(1, 1024)
"""How many sandboxes one command creates."""
