"""``hal task show ID`` (and ``--json``) in process, read without click and pydantic.

The click command (:mod:`hal9999.cli.task_control`) loads the layered config, opens the
store through its models and asks the task API: ~0.4 s of a start for one record. This path
reads the record as ``hal task list``'s thin path does (:func:`task_rows.read_tasks`: the
same rule for the config, the store, and a task to reconcile) and is taken only where it
prints exactly what that command prints:

- no ``hal serve`` runs for the home (through one, the click command asks it and words its
  answer its own way) or ``HAL_NO_DAEMON`` is set;
- the id is one click reads as the argument (not an option) and names one task, exactly
  or as the only task its prefix names (no task, or several: the full path words the error);
- the record is one :mod:`hal9999.cli.task_doc` vouches for.

Anything else returns before printing, and click runs the command.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from hal9999.cli.task_rows import here, read_tasks

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, cast

    from hal9999.cli.task_table import TaskSummary  # noqa: F401  # in a cast
else:
    from hal9999.lighttyping import cast


def show_args(argv: Sequence[str]) -> tuple[str, bool] | None:
    """The id and ``--json`` of ``hal task show ARGV`` when click would read them so: one
    argument and at most ``--json``s around it; None for anything else."""
    ids = [word for word in argv if word != "--json"]
    if len(ids) != 1 or ids[0].startswith("-"):
        return None
    return ids[0], len(ids) != len(argv)


def thin_task(environ: Mapping[str, str], cwd: str | None, task_id: str) -> dict[str, Any] | None:
    """The record ``hal task show`` shows, as its JSON document; None when the full path
    must answer."""
    from hal9999.cli.thin_config import no_daemon

    key = task_id.strip()  # as the store's find_task
    if not key:
        return None
    # The daemon first: through one, the click command's thin client answers, and this
    # process had better not have imported the store's modules (test_daemon_run_e2e.py).
    if not no_daemon(environ) and _daemon_runs(environ, cwd):
        return None
    found = read_tasks(
        environ,
        cwd,
        [(" WHERE id = ?", (key,)), (" WHERE substr(id, 1, ?) = ? LIMIT 2", (len(key), key))],
        whole=True,
        sweep=False,  # `get` sweeps nothing (only the list and a run do)
    )
    if found is None or len(found[0]) != 1:
        return None  # no such task, or several: the full path says so
    from hal9999.cli.task_doc import Unsure, task_doc

    rows, names = found
    try:
        return task_doc(names, rows[0][1])
    except Unsure:
        return None


def _daemon_runs(environ: Mapping[str, str], cwd: str | None) -> bool:
    from hal9999.cli.thin_config import listing_home
    from hal9999.server.runtime import find_running

    home = listing_home(environ, cwd)
    return home is None or find_running(home) is not None


def show_lines(doc: dict[str, Any]) -> list[str]:
    """What the click command prints of the record in process (``task_control.show``)."""
    from hal9999.cli.task_table import sanitized, summary
    from hal9999.tasks.alive import waits_for_runner

    lines = [
        summary(cast("TaskSummary", SimpleNamespace(**doc))),
        f"prompt    {sanitized(doc['prompt'])}",
    ]
    if waits_for_runner(doc["status"], doc["runner_pid"]):
        lines.append(
            f"waiting   no hal process holds it: `hal serve` starts it, "
            f"`hal task resume {doc['id']}` runs it here"
        )
    from hal9999.cli.runnotes import upstream_note

    upstream = upstream_note(doc)
    if upstream is not None:
        lines.append(upstream)
    return lines


def show_without_click(argv: Sequence[str]) -> None:
    """``hal task show ARGV`` when :func:`thin_task` answers: print as the click command and
    exit 0 (a reader gone: 141, quietly); return having printed nothing otherwise."""
    if sys.stdout is None or (sys.stdout.encoding or "").lower() not in ("utf-8", "utf8"):
        return  # click's echo copes with such a stream
    try:
        args = show_args(argv)
        doc = None if args is None else thin_task(os.environ, here(), args[0])
        if doc is None or args is None:
            return
        from hal9999.cli.echo import echo
        from hal9999.cli.entry import exit_after
        from hal9999.cli.task_doc import json_text

        lines = [json_text(doc)] if args[1] else show_lines(doc)
    except Exception:
        return

    def write() -> None:
        for line in lines:
            echo(line)

    exit_after(write)
