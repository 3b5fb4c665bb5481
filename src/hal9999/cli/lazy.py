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

import click

from hal9999.cli.command_table import COMMANDS as COMMANDS
from hal9999.cli.command_table import TASK_COMMANDS as TASK_COMMANDS
from hal9999.cli.command_table import LazyCommand as LazyCommand


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
