"""The full path of ``hal run``: the config, the store and the task API (this process's, or
the daemon's when the thin client could not post the run).

Without click: an in-process ``hal run`` whose options
:mod:`hal9999.cli.run_argv` reads comes here straight from the entry point, and the click
command (:mod:`hal9999.cli.run`) comes here for every other form.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from hal9999.cli.app import (
    App,
    Started,
    app,
    collector_paused,
    emit_json,
    finish_run,
    offline_notice,
    output_callbacks,
    run_async,
)
from hal9999.cli.daemon_run import env_options
from hal9999.cli.echo import echo
from hal9999.cli.task_table import one_line
from hal9999.errors import TaskNotFound
from hal9999.runoptions import DEFAULTED, RunArgs, run_wire

if TYPE_CHECKING:
    from typing import Any

    from hal9999.cli.notices import Uncommitted
    from hal9999.store import TaskRecord
    from hal9999.tasks.api import TaskAPI


def print_detached(task: TaskRecord, as_json: bool) -> None:
    """What ``hal run --detach`` prints: the id, or a small JSON document."""
    if as_json:
        emit_json({"id": task.id, "status": task.status, "session_dir": task.session_dir})
    else:
        echo(task.id)


def full_run(args: RunArgs) -> None:
    """``hal run`` with the config, the store and the task API (in-process or the daemon's)."""
    from hal9999.cli.notices import start_uncommitted

    # It runs while the imports below load.
    pending = start_uncommitted(args.repo, args.ref, args.issue)
    early = open_early_pane(args)
    try:
        _full_run(args, pending)
    finally:
        pending.close()
        if early:
            from hal9999.process.tmuxearly import let_early_go

            let_early_go()


def open_early_pane(args: RunArgs) -> bool:
    """Start the tmux server and pane of a foreground in-process run that will be tmux's,
    as far as the options and ``HAL_*`` variables tell, while the imports below load
    (:mod:`hal9999.process.tmuxearly`); whether it was tried. A config file that names
    another process manager leaves the pane unclaimed: it is let go at the end."""
    import os
    import shutil
    from pathlib import Path

    from hal9999.errors import HalError

    manager = args.process_manager or os.environ.get("HAL_PROCESS_MANAGER") or "tmux"
    if args.detach or manager != "tmux":
        return False  # a runner process of its own, or another manager
    try:
        if not _in_process(os.environ):
            return False
    except (HalError, OSError):
        return False  # the full path says what is wrong
    tmux = shutil.which("tmux")  # as the manager finds it (a pane of another is let go)
    if tmux is None:
        return False
    from hal9999.process.tmuxearly import NO_UTMP_BUILT, open_early
    from hal9999.providers.host.user import trusted_program

    open_early(tmux, trusted_program(Path(NO_UTMP_BUILT)))
    return True


def _in_process(environ: Mapping[str, str]) -> bool:
    """Whether the run will be this process's: ``HAL_NO_DAEMON``, or no daemon runs for the
    home the defaults and ``HAL_*`` variables name (with a config file, not known here)."""
    from hal9999.cli.daemon_run import simple_config
    from hal9999.cli.thin_config import no_daemon
    from hal9999.workdir import current_path

    if no_daemon(environ):
        return True
    from hal9999.server.runtime import find_running  # the thin path's, imported already

    found = simple_config(environ, current_path())
    return found is not None and find_running(str(found[0]["home"])) is None


def _prepare(
    args: RunArgs, pending: Uncommitted
) -> tuple[App, dict[str, Any], TaskAPI, str | None]:
    """The config, the store, the request and the task API of a run, its notices printed."""
    from hal9999.cli.notices import print_notices
    from hal9999.config import working_dir
    from hal9999.values import EgressHost, check_value

    a = app()
    names, given, secret_names = env_options(args)
    print_notices(a.sources, args.repo, args.ref, pending)
    for host in args.egress:  # worded as the option, as click words a bad --timeout
        check_value(EgressHost, host, "--egress")
    for host in args.egress_only:
        if host != "none":
            check_value(EgressHost, host, "--egress-only")
    request = run_wire(
        args,
        {key: getattr(a.config, key) for _, key in DEFAULTED},
        env_names=names,
        env=given,
        literal_env=sorted(given),
        secret_names=secret_names,
        cwd=str(working_dir(args.repo)),
        config=a.config,
        config_files=list(a.sources.files),
        config_sources=a.sources.notes(),  # recorded with task_created, before any end
    )
    notice = offline_notice(a.config, request["agent"], request["provider"])
    if notice is not None and not args.as_json and not args.as_events:
        echo(f"hal: warning: {notice}", err=True)
    return a, request, a.tasks(), notice


def _full_run(args: RunArgs, pending: Uncommitted) -> None:
    with collector_paused():
        a, request, api, notice = _prepare(args, pending)
    if args.detach:
        task = run_async(api.create(request))
        print_detached(task, args.as_json)
        return
    started = Started()

    def announce(task: TaskRecord) -> None:
        started(task)
        if args.as_json:
            return
        via = ", via hal serve" if a.via_daemon else ""
        agent = one_line(request["agent"])
        echo(f"hal: task {task.id} ({agent} on {request['provider']}{via})", err=True)

    if args.as_events:
        from hal9999.cli.task_table import kept, removed, run_end

        try:
            record = run_async(run_printing_events(api, request, announce))
        except TaskNotFound:
            if started.task is None or a.store.has_task(started.task.id):
                raise
            removed(started.task.id)

        status, line = run_end(
            record.id, record.status, record.error_code,
            record.status == "succeeded" or kept(record.session_dir, a.store.has_task(record.id)),
        )  # fmt: skip
        if line:
            echo(line, err=True)
        sys.exit(status)

    on_output, on_event = output_callbacks(
        request["agent"], raw=args.raw, quiet=args.as_json, said=notice
    )
    finish_run(
        a,
        started,
        lambda: api.run(request, on_start=announce, on_output=on_output, on_event=on_event),
        args.as_json,
    )


async def run_printing_events(
    api: TaskAPI, request: dict[str, Any], on_start: Callable[[TaskRecord], None]
) -> TaskRecord:
    """Run the task, printing every event it records as a JSON line (``--events``)."""
    import asyncio

    from hal9999.cli.output import jsonl_writer

    write = jsonl_writer(sys.stdout)
    created: list[TaskRecord] = []
    ready = asyncio.Event()

    def started(task: TaskRecord) -> None:
        on_start(task)
        created.append(task)
        ready.set()

    run = asyncio.ensure_future(api.run(request, on_start=started))
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait({run, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if created:
        async for event in api.follow(created[0].id):
            write(event)
    return await run
