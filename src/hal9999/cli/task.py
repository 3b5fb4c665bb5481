"""``hal task ...``: follow, attach, resume, diff, remove (``list``, ``show``, ``stop`` and
``cancel`` are in :mod:`hal9999.cli.task_list` and :mod:`hal9999.cli.task_control`, light)."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from hal9999.cli.echo import end_terminal_stream
from hal9999.cli.main import (
    App,
    Started,
    app,
    cancel_on_sigterm,
    emit_json,
    finish_run,
    offline_notice,
    output_callbacks,
    run_async,
    stream_to_terminal,
)
from hal9999.cli.options import json_option
from hal9999.cli.render import task_json
from hal9999.cli.task_group import task
from hal9999.errors import ProcessError, TaskStateError, UsageError
from hal9999.tasks.alive import waits_for_runner
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE, TaskStatus

# What only some commands use is imported where they use it: the event models
# and their reader (``events``), asyncio (``-f`` and the commands that run or resume), the
# process managers and run specs (``attach``), the credentials (``resume``).
if TYPE_CHECKING:
    from hal9999.store import TaskRecord


async def _still_going(task_id: str) -> bool:
    """Whether a task is still in flight: its runner works on it, or its runner died but its
    agent still runs (a ``kill -9`` of ``hal run`` leaves the agent alive in tmux)."""
    from hal9999.tasks.recovery import agent_status

    a = app()
    try:
        record = a.find(task_id)
        if waits_for_runner(record.status, record.runner_pid, record.runner_started):
            return False  # nothing of it runs, nor will until a runner takes it
        if record.status in ACTIVE:
            return True
        if record.status != TaskStatus.INTERRUPTED:
            return False
        return (await agent_status(a.service, record)).state == "running"
    finally:
        a.store.close()


class _Liveness:
    """Polls :func:`_still_going` in the background; ``stopped()`` is what followers ask."""

    def __init__(self, task_id: str, every: float = 0.5) -> None:
        self.task_id = task_id
        self.every = every
        self.going = True

    def stopped(self) -> bool:
        """True once the task is over (and its agent gone)."""
        return not self.going

    async def watch(self) -> None:
        """Keep ``going`` current until the task is over."""
        import asyncio

        while self.going:
            self.going = await _still_going(self.task_id)
            await asyncio.sleep(self.every)


async def _following(task_id: str, follow: Callable[[_Liveness], Awaitable[None]]) -> None:
    """Run ``follow`` while a watcher keeps the task's liveness current."""
    import asyncio
    import contextlib

    live = _Liveness(task_id)
    live.going = await _still_going(task_id)
    watcher = asyncio.create_task(live.watch())
    try:
        await follow(live)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    a = app()
    try:
        record = a.find(task_id)
    finally:
        a.store.close()
    if waits_for_runner(record.status, record.runner_pid, record.runner_started):
        click.echo(
            f"hal: task {record.id} is queued and no hal process holds it: `hal serve` "
            f"starts it, `hal task resume {record.id}` runs it here",
            err=True,
        )


@task.command()
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the task runs.")
def logs(task_id: str, follow: bool) -> None:
    """Print the agent's output."""
    record = app().find(task_id)
    log = Session(Path(record.session_dir)).log
    if not follow:
        # Streamed in chunks (the log can be large), sanitised for the terminal.
        if log.exists():
            with _open_session_file(log, "r", encoding="utf-8", errors="replace") as handle:
                while chunk := handle.read(1 << 20):
                    stream_to_terminal(chunk)
            end_terminal_stream()
        return

    from hal9999.events.reader import follow_text

    async def tail(live: _Liveness) -> None:
        async for chunk in follow_text(log, stop=live.stopped):
            stream_to_terminal(chunk)

    run_async(_following(record.id, tail))


@task.command()
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the task runs.")
@json_option("Raw JSONL instead of text.")
@click.option("--output", "with_output", is_flag=True, help="Include raw output chunks.")
def events(task_id: str, follow: bool, as_json: bool, with_output: bool) -> None:
    """Print the task's events."""
    from hal9999.cli.output import escape_json_line
    from hal9999.cli.render import event_line
    from hal9999.events.reader import follow_events, read_events

    record = app().find(task_id)
    path = Session(Path(record.session_dir)).events

    def show(event: object) -> None:
        from hal9999.events.models import Output

        if as_json:
            click.echo(escape_json_line(event.model_dump_json()))  # type: ignore[attr-defined]
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

    async def tail(live: _Liveness) -> None:
        async for event in follow_events(path, stop=live.stopped):
            show(event)

    run_async(_following(record.id, tail))


@task.command()
@click.argument("task_id")
def attach(task_id: str) -> None:
    """Attach your terminal to the running agent (detach: Ctrl-b d)."""
    from hal9999.tasks.recovery import agent_status

    a = app()
    record = a.find(task_id)
    # A task whose runner died (interrupted) may still have its agent running in tmux.
    live = record.status in ACTIVE or (
        record.status == TaskStatus.INTERRUPTED
        and run_async(agent_status(a.service, record)).state == "running"
    )
    if not live:
        raise TaskStateError(
            f"task {record.id} is {record.status}, there is nothing to attach to",
            hint=f"read its output with `hal task logs {record.id}`",
        )
    if not os.isatty(0):  # else tmux's own "open terminal failed: not a terminal", exit 1
        raise UsageError(
            "hal task attach needs a terminal, and its standard input is not one",
            hint=f"run it in a terminal, or follow the output with `hal task logs -f {record.id}`",
        )
    from hal9999.process.registry import load_process_manager
    from hal9999.spec import ArgvCommand
    from hal9999.tasks.context import process_spec

    manager = load_process_manager(record.process_manager, runtime_dir=None)
    spec = process_spec(record, Session(Path(record.session_dir)), ArgvCommand(argv=("true",)))
    argv = _remote_attach(a, record) or manager.attach_command(spec)
    if argv is None:
        raise ProcessError(
            f"the {record.process_manager} process manager cannot attach",
            hint=f"follow it with `hal task logs -f {record.id}`",
        )
    os.execvp(argv[0], argv)


def _remote_attach(a: App, record: TaskRecord) -> list[str] | None:
    """When the task's run lives on another host (an ssh sandbox holds it in tmux there),
    the command that attaches to it there; None when the host-side attach is the one."""
    from hal9999.errors import HalError

    if not record.sandbox_id or not record.provider:
        return None
    try:
        sandbox = run_async(a.plugins.provider(record.provider).get(record.sandbox_id))
    except HalError:
        return None
    opener = getattr(sandbox, "session_attach_command", None)
    return list(opener()) if callable(opener) else None


@task.command()
@click.argument("task_id")
@click.argument("prompt", required=False)
@click.option(
    "--env",
    "env",
    multiple=True,
    help="KEY=VALUE given to this run, or KEY to give it this shell's value.",
)
@click.option("--detach", is_flag=True, help="Return at once; the task runs in the background.")
@json_option("Print JSON.")
def resume(
    task_id: str, prompt: str | None, env: tuple[str, ...], detach: bool, as_json: bool
) -> None:
    """Run a stopped or finished task again in a new sandbox over the same session."""
    from hal9999.envvars import forwarded_env, parse_env_option

    a = app()
    names, given = parse_env_option(env)
    # A bare KEY, as `hal run --env KEY` takes it, was dropped without a word.
    given = {**forwarded_env([n for n in names if n not in given], os.environ), **given}
    api = a.tasks()
    if detach:
        queued = run_async(api.resume(task_id, prompt=prompt, env=given, detach=True))
        _report(queued, as_json, queued.id)
        return
    found = run_async(api.get(task_id))
    notice = offline_notice(a.config, found.agent, found.provider)
    if notice is not None and not as_json:
        click.echo(f"hal: warning: {notice}", err=True)
    started = Started()

    def announce(record: TaskRecord) -> None:
        started(record)
        if record.status == TaskStatus.RUNNING and not as_json:
            click.echo(f"hal: task {record.id}: its agent is still running; following it", err=True)

    on_output, on_event = output_callbacks(found.agent, raw=False, quiet=as_json, said=notice)
    finish_run(
        a,
        started,
        lambda: api.resume(
            task_id,
            prompt=prompt,
            env=given,
            on_start=announce,
            on_output=on_output,
            on_event=on_event,
        ),
        as_json,
    )


@task.command("_run", hidden=True)
@click.argument("task_id")
@click.argument("prompt", required=False)
@click.option("--adopt", is_flag=True, help="Carry on the task's live agent.")
def run_detached(task_id: str, prompt: str | None, adopt: bool) -> None:
    """Run a queued task, or carry on an adopted one (used by --detach)."""
    from hal9999.tasks.recovery import adopt_again

    a = app()

    async def go() -> TaskRecord:
        adopted = await adopt_again(a.service, task_id) if adopt else None
        # Started by spawn_runner, whose process holds the task until it records this one.
        return await a.service.run(
            task_id, prompt=prompt, adopted=adopted, handed_from=os.getppid()
        )

    record = run_async(cancel_on_sigterm(go))  # SIGTERM: cancelled, the sandbox given back
    click.echo(f"task {record.id}: {record.status}")


def _open_session_file(path: Path, mode: str, **how: Any) -> IO[Any]:
    """``path`` of a task's session opened; one it cannot open is a :class:`HomeError`."""
    try:
        return path.open(mode, **how)
    except OSError as exc:
        from hal9999.home import unusable_session_file

        raise unusable_session_file(path, exc) from exc


def _no_patch_hint(record: TaskRecord) -> str:
    """Why a task has no patch, by its state (a stopped task is collected only on resume)."""
    session = Path(record.session_dir)
    workspace = session / "workspace"
    if not session.is_dir():
        # Deleted outside hal: pointing at its workspace sent the user to a path not there.
        kept = f"what was collected is on branch {record.branch}" if record.branch else ""
        kept += f" of {record.repo}" if kept and record.repo_kind == "local" else ""
        return (
            f"its session directory {session} is gone (deleted outside hal), and the patch "
            f"and the agent's work with it; {kept + ', if any; ' if kept else ''}"
            f"hal task rm {record.id} forgets the task"
        )
    if record.status in ACTIVE:
        return "the patch is written when the task finishes, fails or times out"
    if record.status in ("stopped", "interrupted"):
        return (
            f"a {record.status} task is collected when it is resumed and ends: "
            f"hal task resume {record.id}; its work so far is in {workspace}"
        )
    return f"collection did not produce one; the agent's work, if any, is in {workspace}"


@task.command()
@click.argument("task_id")
def diff(task_id: str) -> None:
    """Print the task's patch."""
    record = app().find(task_id)
    patch = Session(Path(record.session_dir)).patch
    if not patch.exists():
        raise TaskStateError(
            f"task {record.id} has no patch ({record.status})", hint=_no_patch_hint(record)
        )
    # Streamed: a patch can be hundreds of MB and must not be held in memory. The agent
    # wrote its files: on a terminal the patch is a view, its odd bytes made visible
    # (reviewdiff) and sanitised like the log (an OSC 52 in a changed line wrote the
    # clipboard); piped, it is the exact bytes `git apply` needs.
    if sys.stdout.isatty():
        from hal9999.tasks.reviewdiff import ReviewRenderer

        view = ReviewRenderer(keep_escape=True)
        with _open_session_file(
            patch, "r", encoding="utf-8", errors="replace", newline=""
        ) as handle:
            while text := handle.read(1 << 20):
                stream_to_terminal(view.feed(text))
        stream_to_terminal(view.flush())
        end_terminal_stream()
        return
    sys.stdout.flush()
    with _open_session_file(patch, "rb") as source:
        while chunk := source.read(1 << 20):
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


@task.command()
@click.argument("task_id")
@click.option("--force", is_flag=True, help="Cancel a running task first.")
@json_option("Print JSON.")
def rm(task_id: str, force: bool, as_json: bool) -> None:
    """Delete a task and its session directory."""
    gone = run_async(app().tasks().remove(task_id, force=force))
    _report(gone, as_json, f"removed {gone.id}")


def _report(record: TaskRecord, as_json: bool, text: str) -> None:
    if as_json:
        emit_json(task_json(record))
    else:
        click.echo(text)
