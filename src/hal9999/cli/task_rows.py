"""The rows of ``hal task list``, read from the store with the standard library alone.

The thin path of :mod:`hal9999.cli.task_list` (its docstring says when it is taken), apart
from the click command so that ``hal task list`` (bare, or in the option forms
:func:`hal9999.cli.task_doc.list_args` reads) is answered from the entry point without
importing click (:func:`list_without_click`): click would be about
half of its modules. Any other form goes through click and the same :func:`thin_rows` and
:func:`thin_tasks`; ``hal task show`` reads its record with :func:`read_tasks`
(:mod:`hal9999.cli.task_show`).
"""

from __future__ import annotations

import os
import sys

from hal9999.cli.task_table import task_table
from hal9999.cli.thin_config import listing_home
from hal9999.cli.thin_config import thin_home as thin_home  # re-exported (tests)
from hal9999.home import DB_NAME
from hal9999.tasks.alive import runner_alive
from hal9999.workdir import pure_path

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, NamedTuple

    from hal9999.cli.task_doc import ListArgs
else:
    from hal9999.lighttyping import NamedTuple

NO_TASKS = 'no tasks yet; start one with: hal run "PROMPT"'
"""What ``hal task list`` says of an empty store."""


def no_tasks(statuses: Sequence[str]) -> str:
    """What ``hal task list`` says when nothing is listed: of a ``--status`` filter, that
    nothing matched it (the store may hold other tasks: "no tasks yet" said it held none)."""
    if not statuses:
        return NO_TASKS
    return f"no {' or '.join(statuses)} tasks (`hal task list` lists every task)"


ACTIVE_STATES = frozenset({"queued", "provisioning", "preparing", "running", "collecting"})
"""``tasks.state.ACTIVE``, as names (a test keeps them equal)."""
FINAL_STATES = ("cancelled", "failed", "succeeded", "timed_out")
"""``tasks.state.FINAL``, as names (a test keeps them equal)."""
_OWED_SQL = (
    "SELECT runner_pid, runner_started FROM tasks WHERE sandbox_id IS NOT NULL AND status IN"
    f" ({', '.join(repr(state) for state in FINAL_STATES)})"
)
"""The runners of final tasks whose record still names a sandbox (see tasks/deadruns.py)."""
_COLUMNS = (
    "id, status, agent, provider, prompt, created_at, started_at, finished_at, runner_pid,"
    " runner_started"
)


class Row(NamedTuple):
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
    runner_started: int | None


def here() -> str | None:
    """The current directory; None when it was deleted (it has no ./hal.toml then, as
    hal9999.config.current_dir says)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def thin_rows(
    environ: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    statuses: Sequence[str],
    limit: int | None,
) -> list[Row] | None:
    """The rows ``hal task list`` shows, read with the standard library; None when the
    full path must answer (see the module's docstring)."""
    found = _select(environ, cwd, statuses, limit, whole=False)
    return None if found is None else [row for row, _ in found[0]]


def thin_tasks(
    environ: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    statuses: Sequence[str],
    limit: int | None,
) -> list[dict[str, Any]] | None:
    """The document ``hal task list --json`` prints (:mod:`hal9999.cli.task_doc`), when
    :func:`thin_rows` would answer and every row is one the thin path vouches for."""
    found = _select(environ, cwd, statuses, limit, whole=True)
    if found is None:
        return None
    from hal9999.cli.task_doc import Unsure, task_doc

    rows, names = found
    try:
        return [task_doc(names, whole) for _, whole in rows]
    except Unsure:
        return None


def _select(
    environ: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    statuses: Sequence[str],
    limit: int | None,
    whole: bool,
) -> tuple[list[tuple[Row, tuple[Any, ...]]], list[str]] | None:
    """The listed tasks' rows (and with ``whole``, every column and the columns' names)."""
    clause = ""
    params: list[object] = list(statuses)
    if statuses:
        clause += f" WHERE status IN ({', '.join('?' * len(statuses))})"
    clause += " ORDER BY created_at DESC, rowid DESC"
    if limit is not None:
        clause += " LIMIT ?"
        params.append(limit)
    return read_tasks(environ, cwd, [(clause, params)], whole, sweep=True)


def read_tasks(
    environ: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    queries: Sequence[tuple[str, Sequence[object]]],
    whole: bool,
    sweep: bool,
) -> tuple[list[tuple[Row, tuple[Any, ...]]], list[str]] | None:
    """The rows of the first of ``queries`` (a clause after ``FROM tasks`` and its
    parameters) that finds any (or the last's none), each :class:`Row` and with ``whole``
    every column, and the columns' names; None when the full path must answer: a config it
    must read, no store or another schema, a row it would reconcile, and with ``sweep`` a
    killed run's sandbox it would destroy first."""
    home = listing_home(environ, None if cwd is None else os.fspath(cwd))
    if home is None:
        return None
    import sqlite3

    from hal9999.store import readonly
    from hal9999.store.migrations import MIGRATIONS

    db = pure_path(home, DB_NAME)
    if not os.path.isfile(db):  # False on any OSError too (a name too long, say)
        return None  # the full path creates it (and the home), or says why it cannot
    select = f"SELECT {_COLUMNS}{', *' if whole else ''} FROM tasks"
    width = len(Row._fields)
    try:
        conn = readonly.connect(db)[0]  # on a read-only home too
        try:
            version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
            if version != MIGRATIONS[-1].version:
                return None
            for clause, params in queries:
                cursor = conn.execute(select + clause, params)
                names = [column[0] for column in cursor.description[width:]]
                rows = [(Row(*found[:width]), found[width:]) for found in cursor]
                if rows:
                    break
            owed = conn.execute(_OWED_SQL).fetchall() if sweep else []
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # the full path reports it as one clear line
    if any(_needs_reconciling(row) for row, _ in rows):
        return None
    if any(not runner_alive(pid, started) for pid, started in owed):
        return None  # a killed run's sandbox to sweep (tasks/deadruns.py), on the full path
    return rows, names


def _needs_reconciling(row: Row) -> bool:
    # The test of TaskService.reconcile, without its write: a queued task is left as it is,
    # with or without a runner (the next `hal serve` or `hal task resume` starts it).
    return (
        row.status in ACTIVE_STATES
        and row.status != "queued"
        and not runner_alive(row.runner_pid, row.runner_started)
    )


def list_without_click(argv: Sequence[str]) -> None:
    """``hal task list ARGV`` in the forms :func:`task_doc.list_args` reads, when
    :func:`thin_rows` (or, for ``--json``, :func:`thin_tasks`) answers: print the table (or
    that there are no tasks, or the JSON document) as click's ``echo`` would and exit 0 (a
    reader that went away: status 141, quietly, as the click path's; no standard output:
    nothing, 0). Returns when the full path must answer, having printed nothing: anything
    raised here is the full path's to meet again and report as one line."""
    if sys.stdout is not None and (sys.stdout.encoding or "").lower() not in ("utf-8", "utf8"):
        return  # click's echo copes with a stream that cannot take every character
    try:
        args = _args(argv)
        if args is None:
            return
        statuses, limit = args.statuses, args.limit
        if args.as_json:
            from hal9999.cli.task_doc import json_text  # emit_json's text

            tasks = thin_tasks(os.environ, here(), statuses, limit)
            text = None if tasks is None else json_text(tasks)
        else:
            rows = thin_rows(os.environ, here(), statuses, limit)
            text = None if rows is None else task_table(list(rows)) if rows else no_tasks(statuses)
    except Exception:
        return
    if text is None:
        return
    if sys.stdout is None:
        sys.exit(0)
    from hal9999.cli.entry import exit_after

    exit_after(lambda: sys.stdout.write(text + "\n"))


def _args(argv: Sequence[str]) -> ListArgs | None:
    if not argv:
        from hal9999.cli.task_doc import ListArgs

        return ListArgs()
    from hal9999.cli.task_doc import list_args

    return list_args(argv)
