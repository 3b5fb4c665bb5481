"""``hal task show``, ``stop`` and ``cancel``, light: through a running ``hal serve`` they ask
it with the thin client (:func:`hal9999.cli.daemon_run.thin_daemon`: plain JSON, no config,
store or models), and print what the full path prints from the same answer; otherwise (no
daemon, or a config the thin client leaves to the full path) they use the task API as
before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import click

from hal9999.cli.main import emit_json
from hal9999.cli.options import json_option
from hal9999.cli.task_group import task
from hal9999.cli.task_table import TaskSummary, summary
from hal9999.tasks.alive import waits_for_runner

if TYPE_CHECKING:
    from hal9999.cli.app import App
    from hal9999.store import TaskRecord
    from hal9999.tasks.api import TaskAPI


def ask(
    method: str,
    path: str,
    full: Callable[[TaskAPI], Any],
    local: Callable[[App], TaskRecord] | None = None,
) -> tuple[dict[str, Any], TaskRecord | None]:
    """The daemon's JSON of a task (and None) through the thin client; else the record and
    its JSON: from the daemon the config finds (the request the daemon's task API sends,
    sent without an event loop), or else from the task API in this process (``full``
    awaited), or read by ``local`` when given (a read needs neither the task API nor
    asyncio). Neither way imports the in-process task service's modules for a daemon."""
    from hal9999.cli.daemon_run import thin_daemon

    found = thin_daemon(os.environ)
    if found is not None:
        return cast(dict[str, Any], found[0].request(method, path)), None
    from hal9999.cli.main import app, run_async
    from hal9999.cli.render import task_json

    a = app()
    record: TaskRecord
    client = a.daemon()
    if client is not None:
        from hal9999.store.records import task_record

        record = task_record(client.request(method, path))
    elif local is not None:
        record = local(a)
    else:
        record = run_async(full(a.tasks()))
    return task_json(record), record


def _shown(data: dict[str, Any], record: TaskRecord | None) -> TaskSummary:
    return record if record is not None else cast(TaskSummary, SimpleNamespace(**data))


@task.command()
@click.argument("task_id")
@json_option("Print JSON.")
def show(task_id: str, as_json: bool) -> None:
    """Show one task."""
    data, record = ask(
        "GET", f"/v1/tasks/{task_id}", lambda api: api.get(task_id), lambda a: a.find(task_id)
    )
    if as_json:
        emit_json(data)
    else:
        click.echo(summary(_shown(data, record)))
        from hal9999.cli.output import sanitize

        # A hive agent writes the prompts of its sub-tasks: cleaned as the agent's output is.
        click.echo(f"prompt    {sanitize(data['prompt'])}")
        if record is not None and waits_for_runner(
            record.status, record.runner_pid, record.runner_started
        ):
            click.echo(
                f"waiting   no hal process holds it: `hal serve` starts it, "
                f"`hal task resume {record.id}` runs it here"
            )


@task.command()
@click.argument("task_id")
@json_option("Print JSON.")
def stop(task_id: str, as_json: bool) -> None:
    """Stop a task: its sandbox goes, its session stays; resume it later."""
    data, _ = ask("POST", f"/v1/tasks/{task_id}/stop", lambda api: api.stop(task_id))
    done = data["id"]
    _report(data, as_json, f"stopped {done}; resume with `hal task resume {done}`")


@task.command()
@click.argument("task_id")
@json_option("Print JSON.")
def cancel(task_id: str, as_json: bool) -> None:
    """Cancel a task (queued or running): its sandbox goes, its session stays."""
    data, _ = ask("POST", f"/v1/tasks/{task_id}/cancel", lambda api: api.cancel(task_id))
    _report(data, as_json, f"cancelled {data['id']}")


def _report(data: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        emit_json(data)
    else:
        click.echo(text)
