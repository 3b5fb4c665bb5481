"""The ``hal`` command line: one place that turns errors into one clear line.

Start-up stays light: subcommands load on first use (:mod:`hal9999.cli.lazy`) and what the
commands share (:mod:`hal9999.cli.app`, re-exported here) imports config, the store and the
task service only inside the functions that need them, so ``hal --version`` and ``hal
--help`` import neither pydantic nor httpx.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from hal9999 import __version__
from hal9999.cli.app import App as App
from hal9999.cli.app import Started as Started
from hal9999.cli.app import app as app
from hal9999.cli.app import cancel_on_sigterm as cancel_on_sigterm
from hal9999.cli.app import collector_paused as collector_paused
from hal9999.cli.app import finish_run as finish_run
from hal9999.cli.app import offline_notice as offline_notice
from hal9999.cli.app import output_callbacks as output_callbacks
from hal9999.cli.app import report_failure
from hal9999.cli.app import run_async as run_async
from hal9999.cli.app import spawn_runner as spawn_runner
from hal9999.cli.command_table import HELP_OPTIONS, ROOT_HELP
from hal9999.cli.echo import emit_json as emit_json
from hal9999.cli.echo import stream_to_terminal as stream_to_terminal
from hal9999.cli.lazy import LazyGroup
from hal9999.cli.options import JSON_META, wants_json
from hal9999.errors import UsageError


class HalGroup(LazyGroup):
    """A lazy click group that prints :class:`HalError` as one line and exits with its status."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; map errors to messages and exit statuses."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            ctx.exit(report_failure(exc, as_json=bool(ctx.meta.get(JSON_META))))


@click.group(
    cls=HalGroup, help=ROOT_HELP, context_settings={"help_option_names": list(HELP_OPTIONS)}
)
@click.version_option(__version__, prog_name="hal")
def cli() -> None:
    """The ``hal`` command (its help is :data:`ROOT_HELP`)."""


def _is_text(arg: str) -> bool:
    # ASCII is always text; only the rest needs hal9999.values (which imports pydantic).
    if arg.isascii():
        return True
    from hal9999.values import is_text

    return is_text(arg)


def main() -> None:
    """Console entry point: usage errors are one line too, with the usage status 2."""
    from hal9999.cli.entry import exit_lightly

    try:
        _main()
    finally:
        exit_lightly()


def _main() -> None:
    for position, arg in enumerate(sys.argv[1:], 1):
        if not _is_text(arg):
            click.echo(f"hal: error: argument {position} is not UTF-8 text "
                       "(pass names, paths and values as UTF-8)", err=True)  # fmt: skip
            if "--json" in sys.argv[1:]:  # not parsed yet: any --json asks for the object
                from hal9999.cli.app import error_json

                error_json(UsageError(f"argument {position} is not UTF-8 text",
                                      hint="pass names, paths and values as UTF-8"))  # fmt: skip
            sys.exit(UsageError.exit_status)
    try:
        status = cli.main(prog_name="hal", standalone_mode=False)
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `hal` or `hal task`: the help
            exc.show()
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "hal"
        from hal9999.cli.output import error_line  # click quotes the value given, whole

        message = error_line(exc.format_message())
        click.echo(f"hal: error: {message} (see: {where} --help)", err=True)
        if isinstance(exc, click.UsageError) and wants_json(exc.ctx):
            from hal9999.cli.app import error_json

            error_json(UsageError(exc.format_message(), hint=f"see: {where} --help"))
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("hal: interrupted", err=True)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    # Run the canonical module, not this __main__ copy, so subcommands register on one group.
    from hal9999.cli import main as canonical

    canonical.main()
