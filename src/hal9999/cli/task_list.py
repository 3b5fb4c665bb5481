"""``hal task list``, with a thin path that reads the store without hal's models.

The full path loads the layered config (pydantic), opens the store through :class:`Store`
(migrations, every record a pydantic model) and asks the task API (the daemon's over HTTP
when ``hal serve`` runs): about 400 modules for a table of rows. The thin path reads the
same rows from SQLite with the standard library only, and is taken only when it gives
exactly what the full path would:

- the configuration can only be the defaults plus ``HAL_HOME``, ``HAL_NO_DAEMON`` and the
  name variables (``HAL_AGENT``, ``HAL_PROVIDER``, ``HAL_PROCESS_MANAGER``: they cannot change
  what is listed), each with a value the full config takes as it is: no user config file, no
  ``./hal.toml``, no other ``HAL_*`` variable (each of those could set the home or be an
  error the full path must report; :func:`hal9999.cli.thin_config.listing_home`);
- the store exists and is at this hal's schema version (else the full path creates or
  migrates it, or says it is newer);
- no listed task needs reconciling (an active task whose runner died is marked
  ``interrupted`` by the full path, a write the thin path does not do), and no run killed
  after its final status left a sandbox (the full path destroys it, ``tasks/deadruns.py``);
- for ``--json``, every row holds what the record model would take unchanged
  (:mod:`hal9999.cli.task_doc`, which builds the model's JSON form of it).

Whether ``hal serve`` runs does not matter: the daemon lists the same store's records,
reconciled by the same rule. Anything else falls back to the full path, so what is printed
never depends on the path.
"""

from __future__ import annotations

import os

import click

from hal9999.cli.echo import emit_json
from hal9999.cli.options import TASK_STATES as TASK_STATES  # re-exported (tests)
from hal9999.cli.options import json_option
from hal9999.cli.task_group import task
from hal9999.cli.task_rows import ACTIVE_STATES as ACTIVE_STATES  # re-exported (tests)
from hal9999.cli.task_rows import FINAL_STATES as FINAL_STATES
from hal9999.cli.task_rows import here, no_tasks, thin_rows, thin_tasks
from hal9999.cli.task_rows import thin_home as thin_home
from hal9999.cli.task_table import task_table
from hal9999.cli.thin_config import THIN_VARS as THIN_VARS  # re-exported (tests)


@task.command("list")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice(TASK_STATES),
    help="Only tasks in this state.",
)  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 1_000_000), help="At most this many tasks.")
@json_option("Print JSON.")
def list_(statuses: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """List tasks, newest first."""
    if as_json:
        tasks = thin_tasks(os.environ, here(), statuses, limit)
        if tasks is None:
            _full_list(statuses, limit, as_json)
        else:
            emit_json(tasks)
        return
    rows = thin_rows(os.environ, here(), statuses, limit)
    if rows is None:
        _full_list(statuses, limit, as_json)
    elif rows:
        click.echo(task_table(list(rows)))
    else:
        click.echo(no_tasks(statuses))


def _full_list(statuses: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    from hal9999.cli.main import app, run_async
    from hal9999.cli.render import task_json

    a = app()
    tasks = run_async(a.tasks().list(status=list(statuses) or None, limit=limit))
    if as_json:
        emit_json([task_json(t) for t in tasks])
    elif tasks:
        click.echo(task_table(list(tasks)))
    else:
        click.echo(no_tasks(statuses))
