"""Command-line option types that check values with the config's own field rules.

``--timeout inf`` and ``timeout_s = inf`` are refused by the same rule (the field types of
:mod:`hal9999.values`), so the command line, config files and ``HAL_*`` agree. A value the
plain check accepts is one the field type accepts unchanged, so pydantic is imported only
to word a refusal (``hal run``'s options stay light; ``tests/cli/test_options.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from hal9999.bounds import MAX_TIMEOUT_S, MAX_TOKENS, MIN_TIMEOUT_S
from hal9999.errors import UsageError
from hal9999.tasks.state import TaskStatus

TASK_STATES = tuple(state.value for state in TaskStatus)
"""The states a task can be in (``--status``' choices)."""


class ModelChecked(click.ParamType[Any]):
    """A click type validated by a config field type (pydantic), worded like config errors."""

    def __init__(
        self,
        kind: str,
        name: str,
        base: click.ParamType[Any] = click.STRING,
        plain: Callable[[Any], bool] | None = None,
    ) -> None:
        self.kind = kind
        """The field type's name in :mod:`hal9999.values`."""
        self.name = name
        self.base = base
        self.plain = plain
        """A check that accepts only values the field type accepts as they are."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse with ``base``, then check with the field type."""
        parsed = self.base.convert(value, param, ctx)
        if self.plain is not None and self.plain(parsed):
            return parsed
        from hal9999 import values

        try:
            return values.check_value(getattr(values, self.kind), parsed, self.name)
        except UsageError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


def _timeout_ok(value: float) -> bool:
    return math.isfinite(value) and MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S


def _dollars_ok(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _name_ok(value: str) -> bool:
    return bool(value.strip())


TIMEOUT = ModelChecked("TimeoutSeconds", "seconds", click.FLOAT, _timeout_ok)
"""``--timeout``: a finite number of seconds greater than 0."""
MAX_COST = ModelChecked("Dollars", "dollars", click.FLOAT, _dollars_ok)
"""``--max-cost``: a finite number of dollars greater than 0."""
NAME = ModelChecked("Name", "name", plain=_name_ok)
"""``--agent``, ``--provider``, ``--process-manager``: not empty."""
MAX_TOKENS_OPTION = click.IntRange(1, MAX_TOKENS)
"""``--max-tokens``: a whole number of tokens from 1 to :data:`MAX_TOKENS`."""
RETRIES = click.IntRange(0, 100)
"""``--retries``: how often an agent failure is retried."""
PRIORITY = click.IntRange(-1_000_000, 1_000_000)
"""``--priority``: bounded so it fits the store's integer column."""
LIMIT = click.IntRange(1, 1_000_000)
"""``--limit`` of listings."""
STATUS = click.Choice(list(TASK_STATES))
"""``--status`` filters: only states a task can be in."""


class ResourceLimit(click.ParamType[Any]):
    """A resource limit option (``--cpus``, ``--memory``), checked by :class:`Resources`."""

    def __init__(self, field: str, base: click.ParamType[Any]) -> None:
        self.field = field
        self.base = base
        self.name = field

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse with ``base``, then check with the model's own validator."""
        from pydantic import ValidationError

        from hal9999.spec import Resources
        from hal9999.values import describe

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


class CountCommand(click.Command):
    """A command with a ``COUNT`` argument: a negative count (``-1``), which click's parser
    takes for an unknown option ("No such option: -1"), is refused as a count out of range."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse as click does; a negative number where an option was looked for is a count."""
        given = list(args)  # click's parser consumes it
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            # -10 reaches here as -1 (short options are split): name what was typed
            typed = next((a for a in given if a[1:].isdecimal() and a.isascii()
                          and a.startswith(exc.option_name)), None)  # fmt: skip
            if typed is None:
                raise
            raise click.UsageError(
                f"COUNT must be from {COUNT.min} to {COUNT.max}, not {typed}: "
                f"give a count of {COUNT.min} or more",
                ctx,
            ) from None


JSON_META = "hal9999.json"
"""Where :func:`json_option` notes, in the click context's ``meta`` (shared by a command's
context and its groups'), that ``--json`` was given: the failure's handler reads it."""


def _note_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_META] = True
    return value


def json_option(help: str = "Print JSON.") -> Callable[[Any], Any]:  # click's word
    """``--json`` (the ``as_json`` parameter): a command's output as JSON, and a failure as
    one JSON error object on stdout too (:func:`hal9999.cli.app.error_json`)."""
    return click.option("--json", "as_json", is_flag=True, help=help, callback=_note_json)


def wants_json(ctx: click.Context | None) -> bool:
    """Whether the command of ``ctx`` (or under it) was given ``--json``: noted by its
    option, or, for a command line click refused before reading the option
    (``--limit x --json``), a ``--json`` before any ``--`` of a command that takes it."""
    if ctx is None:
        return False
    if ctx.meta.get(JSON_META):
        return True
    if not any(param.name == "as_json" for param in ctx.command.params):
        return False
    import sys

    argv = sys.argv[1:]
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
