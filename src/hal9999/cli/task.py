"""``hal task ...``: list, inspect, follow, attach, stop, resume, cancel, diff, remove."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hal9999.cli.main import (
    app,
    cli,
    emit_json,
    finish_run,
    run_async,
    spawn_runner,
    stream_to_terminal,
)
from hal9999.cli.render import event_line, summary, task_json, task_table
from hal9999.cli.via_daemon import finish_daemon_run
from hal9999.cli.via_daemon import record as from_api
from hal9999.credentials import parse_env_option
from hal9999.errors import ProcessError, TaskStateError
from hal9999.events.reader import follow_events, follow_text, read_events
from hal9999.process.registry import load_process_manager
from hal9999.spec import ArgvCommand
from hal9999.store import TaskRecord
from hal9999.tasks.context import process_spec
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE


@cli.group()
def task() -> None:
    """Inspect and control tasks (ids may be abbreviated to a unique prefix)."""


@task.command("list")
@click.option("--status", "statuses", multiple=True, help="Only tasks in this state.")
@click.option("--limit", type=int, help="At most this many tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(statuses: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """List tasks, newest first."""
    a = app()
    client = a.daemon()
    if client is not None:
        query = {"status": ",".join(statuses) or None, "limit": limit}
        tasks = [from_api(t) for t in run_async(client.call("GET", "/v1/tasks", query=query))]
    else:
        tasks = a.service.list(status=list(statuses) or None, limit=limit)
    if as_json:
        emit_json([task_json(t) for t in tasks])
    elif tasks:
        click.echo(task_table(tasks))
    else:
        click.echo('no tasks yet; start one with: hal run "PROMPT"')


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(task_id: str, as_json: bool) -> None:
    """Show one task."""
    a = app()
    client = a.daemon()
    if client is not None:
        found = from_api(run_async(client.call("GET", f"/v1/tasks/{task_id}")))
    else:
        found = a.service.find(task_id)
    if as_json:
        emit_json(task_json(found))
    else:
        click.echo(summary(found))
        click.echo(f"prompt    {found.prompt}")


def _still_running(task_id: str) -> bool:
    a = app()
    try:
        return a.service.find(task_id).status in ACTIVE
    finally:
        a.store.close()


@task.command()
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the task runs.")
def logs(task_id: str, follow: bool) -> None:
    """Print the agent's output."""
    record = app().service.find(task_id)
    log = Session(Path(record.session_dir)).log
    if not follow:
        if log.exists():
            sys.stdout.write(log.read_text(errors="replace"))
        return

    async def tail() -> None:
        async for chunk in follow_text(log, stop=lambda: not _still_running(record.id)):
            stream_to_terminal(chunk)

    run_async(tail())


@task.command()
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the task runs.")
@click.option("--json", "as_json", is_flag=True, help="Raw JSONL instead of text.")
@click.option("--output", "with_output", is_flag=True, help="Include raw output chunks.")
def events(task_id: str, follow: bool, as_json: bool, with_output: bool) -> None:
    """Print the task's events."""
    record = app().service.find(task_id)
    path = Session(Path(record.session_dir)).events

    def show(event: object) -> None:
        from hal9999.events.models import Output

        if as_json:
            click.echo(event.model_dump_json())  # type: ignore[attr-defined]
            return
        if isinstance(event, Output) and with_output:
            stream_to_terminal(event.text)
            return
        line = event_line(event)  # type: ignore[arg-type]
        if line:
            click.echo(line)

    if not follow:
        for event in read_events(path):
            show(event)
        return

    async def tail() -> None:
        async for event in follow_events(path, stop=lambda: not _still_running(record.id)):
            show(event)

    run_async(tail())


@task.command()
@click.argument("task_id")
def attach(task_id: str) -> None:
    """Attach your terminal to the running agent (detach: Ctrl-b d)."""
    a = app()
    record = a.service.find(task_id)
    if record.status not in ACTIVE:
        raise TaskStateError(
            f"task {record.id} is {record.status}, there is nothing to attach to",
            hint=f"read its output with `hal task logs {record.id}`",
        )
    manager = load_process_manager(record.process_manager, runtime_dir=None)
    spec = process_spec(record, Session(Path(record.session_dir)), ArgvCommand(argv=("true",)))
    argv = manager.attach_command(spec)
    if argv is None:
        raise ProcessError(
            f"the {record.process_manager} process manager cannot attach",
            hint=f"follow it with `hal task logs -f {record.id}`",
        )
    os.execvp(argv[0], argv)


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stop(task_id: str, as_json: bool) -> None:
    """Stop a task: its sandbox goes, its session stays; resume it later."""
    done = _control(task_id, "stop")
    _report(done, as_json, f"stopped {done.id}; resume with `hal task resume {done.id}`")


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cancel(task_id: str, as_json: bool) -> None:
    """Cancel a task (queued or running): its sandbox goes, its session stays."""
    done = _control(task_id, "cancel")
    _report(done, as_json, f"cancelled {done.id}")


@task.command()
@click.argument("task_id")
@click.argument("prompt", required=False)
@click.option("--env", "env", multiple=True, help="KEY=VALUE given to this run.")
@click.option("--detach", is_flag=True, help="Return at once; the task runs in the background.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def resume(
    task_id: str, prompt: str | None, env: tuple[str, ...], detach: bool, as_json: bool
) -> None:
    """Run a stopped or finished task again in a new sandbox over the same session."""
    a = app()
    _, given = parse_env_option(env)
    client = a.daemon()
    if client is not None:
        body = {"prompt": prompt, "env": given}
        queued = from_api(run_async(client.call("POST", f"/v1/tasks/{task_id}/resume", body)))
        if detach:
            _report(queued, as_json, queued.id)
            return
        finish_daemon_run(a, client, queued, as_json)
        return
    record = a.service.prepare_resume(task_id)
    if detach:
        spawn_runner(a, record, [prompt] if prompt else [], given)
        _report(record, as_json, record.id)
        return
    on_output = None if as_json else stream_to_terminal
    finish_run(
        a,
        record.id,
        lambda: a.service.run(record.id, given_env=given, prompt=prompt, on_output=on_output),
        as_json,
    )


@task.command("_run", hidden=True)
@click.argument("task_id")
@click.argument("prompt", required=False)
def run_detached(task_id: str, prompt: str | None) -> None:
    """Run a queued task (used by --detach)."""
    a = app()
    record = run_async(a.service.run(task_id, prompt=prompt))
    click.echo(f"task {record.id}: {record.status}")


@task.command()
@click.argument("task_id")
def diff(task_id: str) -> None:
    """Print the task's patch."""
    record = app().service.find(task_id)
    patch = Session(Path(record.session_dir)).patch
    if not patch.exists():
        raise TaskStateError(
            f"task {record.id} has no patch yet ({record.status})",
            hint="the patch is written when the task finishes, stops or times out",
        )
    sys.stdout.write(patch.read_text(errors="replace"))


@task.command()
@click.argument("task_id")
@click.option("--force", is_flag=True, help="Cancel a running task first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rm(task_id: str, force: bool, as_json: bool) -> None:
    """Delete a task and its session directory."""
    a = app()
    client = a.daemon()
    if client is not None:
        query = {"force": "1" if force else None}
        gone = from_api(run_async(client.call("DELETE", f"/v1/tasks/{task_id}", query=query)))
    else:
        gone = run_async(a.service.remove(task_id, force=force))
    _report(gone, as_json, f"removed {gone.id}")


def _control(task_id: str, action: str) -> TaskRecord:
    """Stop or cancel, through the daemon when it runs."""
    a = app()
    client = a.daemon()
    if client is not None:
        return from_api(run_async(client.call("POST", f"/v1/tasks/{task_id}/{action}")))
    if action == "stop":
        return run_async(a.service.stop(task_id))
    return run_async(a.service.cancel(task_id))


def _report(record: TaskRecord, as_json: bool, text: str) -> None:
    if as_json:
        emit_json(task_json(record))
    else:
        click.echo(text)
