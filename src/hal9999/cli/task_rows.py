"""The rows of ``hal task list``, read from the store with the standard library alone.

The thin path of :mod:`hal9999.cli.task_list` (its docstring says when it is taken), apart
from the click command so that a bare ``hal task list`` is answered from the entry point
without importing click (:func:`list_without_click`, issue 16, target 4): click was ~60 of
its ~130 modules. Any other ``hal task list`` goes through click and the same
:func:`thin_rows`.
"""

from __future__ import annotations

import os
import sys
import time

from hal9999.cli.task_table import task_table
from hal9999.cli.thin_config import home_path
from hal9999.cli.thin_config import thin_home as thin_home  # re-exported (tests)
from hal9999.home import DB_NAME
from hal9999.tasks.alive import runner_alive
from hal9999.workdir import pure_path

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NamedTuple
else:
    from hal9999.lighttyping import NamedTuple

NO_TASKS = 'no tasks yet; start one with: hal run "PROMPT"'
"""What ``hal task list`` says of an empty store."""

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
    home = home_path(environ, None if cwd is None else os.fspath(cwd))
    if home is None:
        return None
    import sqlite3

    from hal9999.store.migrations import MIGRATIONS

    db = pure_path(home, DB_NAME)
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


def list_without_click() -> None:
    """``hal task list`` with no option, when :func:`thin_rows` answers: print the table (or
    that there are no tasks) as click's ``echo`` would and exit 0 (a reader that went away:
    status 141, quietly, as the click path's; no standard output: nothing, 0). Returns when
    the full path must answer, having printed nothing: anything :func:`thin_rows` raises is
    the full path's to meet again and report as one line."""
    if sys.stdout is not None and (sys.stdout.encoding or "").lower() not in ("utf-8", "utf8"):
        return  # click's echo copes with a stream that cannot take every character
    try:
        rows = thin_rows(os.environ, here(), (), None)
        text = None if rows is None else task_table(list(rows)) if rows else NO_TASKS
    except Exception:
        return
    if text is None:
        return
    if sys.stdout is None:
        sys.exit(0)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # as hal's report_failure ends it: quietly, as killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + 13)
    sys.exit(0)
