"""``hal task list``, with a thin path that reads the store without hal's models.

The full path loads the layered config (pydantic), opens the store through :class:`Store`
(migrations, every record a pydantic model) and asks the task API (the daemon's over HTTP
when ``hal serve`` runs): about 400 modules for a table of rows. The thin path reads the
same rows from SQLite with the standard library only, and is taken only when it gives
exactly what the full path would (issue 16, target 4):

- the configuration can only be the defaults plus ``HAL_HOME``: no user config file, no
  ``./hal.toml``, no other ``HAL_*`` variable (each of those could set the home or be an
  error the full path must report);
- the store exists and is at this hal's schema version (else the full path creates or
  migrates it, or says it is newer);
- no listed task needs reconciling (an active task whose runner died is marked
  ``interrupted`` by the full path, a write the thin path does not do), and no run killed
  after its final status left a sandbox (the full path destroys it, ``tasks/deadruns.py``);
- the output is the table, not ``--json`` (whose form is the record model's own).

Anything else falls back to the full path, so what is printed never depends on the path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from hal9999.cli.options import TASK_STATES, json_option
from hal9999.cli.task_group import task
from hal9999.cli.task_table import task_table
from hal9999.cli.thin_config import THIN_VARS as THIN_VARS  # re-exported (tests)
from hal9999.cli.thin_config import thin_home
from hal9999.home import DB_NAME
from hal9999.tasks.alive import runner_alive

ACTIVE_STATES = frozenset({"queued", "provisioning", "preparing", "running", "collecting"})
"""``tasks.state.ACTIVE``, as names (a test keeps them equal)."""
QUEUED_GRACE_S = 10.0
"""``TaskService.reconcile`` leaves a queued task without a runner alone this long."""
FINAL_STATES = ("cancelled", "failed", "succeeded", "timed_out")
"""``tasks.state.FINAL``, as names (a test keeps them equal)."""
_OWED_SQL = (
    "SELECT runner_pid FROM tasks WHERE sandbox_id IS NOT NULL AND status IN"
    f" ({', '.join(repr(state) for state in FINAL_STATES)})"
)
"""The runners of final tasks whose record still names a sandbox (see tasks/deadruns.py)."""
_COLUMNS = "id, status, agent, provider, prompt, created_at, started_at, finished_at, runner_pid"


@dataclass(frozen=True)
class Row:
    """The columns of a task the table shows, and what says whether it needs reconciling."""

    id: str
    status: str
    agent: str
    provider: str
    prompt: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    runner_pid: int | None


@task.command("list")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice(TASK_STATES),
    help="Only tasks in this state.",
)  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 1_000_000), help="At most this many tasks.")
@json_option("Print JSON.")
def list_(statuses: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """List tasks, newest first."""
    rows = None if as_json else thin_rows(os.environ, _here(), statuses, limit)
    if rows is None:
        _full_list(statuses, limit, as_json)
    elif rows:
        click.echo(task_table(list(rows)))
    else:
        click.echo('no tasks yet; start one with: hal run "PROMPT"')


def _full_list(statuses: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    from hal9999.cli.main import app, emit_json, run_async
    from hal9999.cli.render import task_json

    a = app()
    tasks = run_async(a.tasks().list(status=list(statuses) or None, limit=limit))
    if as_json:
        emit_json([task_json(t) for t in tasks])
    elif tasks:
        click.echo(task_table(list(tasks)))
    else:
        click.echo('no tasks yet; start one with: hal run "PROMPT"')


def _here() -> Path | None:
    # A deleted current directory has no ./hal.toml (as hal9999.config.current_dir says).
    try:
        return Path.cwd()
    except OSError:
        return None


def thin_rows(
    environ: Mapping[str, str], cwd: Path | None, statuses: Sequence[str], limit: int | None
) -> list[Row] | None:
    """The rows ``hal task list`` shows, read with the standard library; None when the
    full path must answer (see the module's docstring)."""
    home = thin_home(environ, cwd)
    if home is None:
        return None
    import sqlite3

    from hal9999.store.migrations import MIGRATIONS

    db = home / DB_NAME
    if not os.path.isfile(db):  # False on any OSError too (a name too long, say)
        return None  # the full path creates it (and the home), or says why it cannot
    sql = f"SELECT {_COLUMNS} FROM tasks"
    params: list[object] = list(statuses)
    if statuses:
        sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
    sql += " ORDER BY created_at DESC, rowid DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    try:
        # mode=rw: never create a database; the full path owns creating and migrating.
        conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=5.0)
        try:
            version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
            if version != MIGRATIONS[-1].version:
                return None
            rows = [Row(*found) for found in conn.execute(sql, params)]
            owed = conn.execute(_OWED_SQL).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # the full path reports it as one clear line
    if any(_needs_reconciling(row) for row in rows):
        return None
    if any(not runner_alive(pid) for (pid,) in owed):
        return None  # a killed run's sandbox to sweep (tasks/deadruns.py), on the full path
    return rows


def _needs_reconciling(row: Row) -> bool:
    # The test of TaskService.reconcile, without its write.
    if row.status not in ACTIVE_STATES or runner_alive(row.runner_pid):
        return False
    if row.runner_pid is None and row.status == "queued":
        return time.time() - row.created_at >= QUEUED_GRACE_S
    return True
