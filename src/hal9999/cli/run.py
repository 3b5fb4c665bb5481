"""``hal run``: hand a prompt to an agent on a repository, in a sandbox.

Its own module so that only ``hal run`` imports what it needs; see :mod:`hal9999.cli.lazy`.
Light at import: through a running ``hal serve`` the thin client
(:mod:`hal9999.cli.daemon_run`) runs without the config, the task service or any model;
the full path below imports them when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from hal9999.cli.daemon_run import RunArgs
from hal9999.cli.main import (
    App,
    Started,
    app,
    cli,
    collector_paused,
    emit_json,
    finish_run,
    offline_notice,
    output_callbacks,
    run_async,
)
from hal9999.cli.options import NAME, PRIORITY, RETRIES, TIMEOUT
from hal9999.errors import ConfigError, exit_status_for

if TYPE_CHECKING:
    from hal9999.cli.notices import Uncommitted
    from hal9999.store import TaskRecord
    from hal9999.tasks.api import TaskAPI
    from hal9999.tasks.request import RunRequest


def print_detached(task: TaskRecord, as_json: bool) -> None:
    """What ``hal run --detach`` prints: the id, or a small JSON document."""
    if as_json:
        emit_json({"id": task.id, "status": task.status, "session_dir": task.session_dir})
    else:
        click.echo(task.id)


@cli.command()
@click.argument("prompt", required=False)
@click.option("--prompt-file", help="Read the prompt from this file ('-': standard input).")
@click.option("--repo", help="Repository path or git URL (default: the current repository).")
@click.option("--ref", help="Branch, tag or commit to start from (default: the repo's HEAD).")
@click.option(
    "--agent", type=NAME, help="Agent preset name or a command template with {{prompt_file}} etc."
)
@click.option("--provider", type=NAME, help="Sandbox provider (default from config: bwrap).")
@click.option("--process-manager", type=NAME, help="tmux (default) or direct.")
@click.option("--timeout", type=TIMEOUT, help="Seconds before the task is stopped as timed out.")
@click.option(
    "--env",
    "env",
    multiple=True,
    help="NAME forwards a host variable (masked when it looks like a secret); NAME=VALUE "
    "sets one (configuration, never masked).",
)
@click.option(
    "--secret",
    "secret",
    multiple=True,
    help="NAME: forward a host variable as a secret (masked in every log and event).",
)
@click.option("--raw", is_flag=True, help="Show the agent CLI's own output (sanitised).")
@click.option("--events", "as_events", is_flag=True, help="Print hal's events as JSON lines.")
@click.option("--detach", is_flag=True, help="Return at once; the task runs in the background.")
@click.option(
    "--priority", type=PRIORITY, default=0, help="Queue order under hal serve (higher first)."
)
@click.option("--retries", type=RETRIES, default=0, help="Retry an agent failure up to N times.")
@click.option(
    "--max-cost", type=click.FloatRange(min=0, min_open=True), help="Budget of the task in USD."
)
@click.option("--max-tokens", type=click.IntRange(min=1), help="Budget of the task in tokens.")
@click.option(
    "--egress",
    multiple=True,
    help="HOST[:PORT] or *.DOMAIN the task may reach through the egress proxy (repeatable).",
)
@click.option(
    "--egress-only",
    multiple=True,
    help="Narrow egress: only these of the hosts config allows (repeatable; 'none' for none).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def run(
    prompt: str | None,
    prompt_file: str | None,
    repo: str | None,
    ref: str | None,
    agent: str | None,
    provider: str | None,
    process_manager: str | None,
    timeout: float | None,
    env: tuple[str, ...],
    secret: tuple[str, ...],
    raw: bool,
    as_events: bool,
    detach: bool,
    priority: int,
    retries: int,
    max_cost: float | None,
    max_tokens: int | None,
    egress: tuple[str, ...],
    egress_only: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run PROMPT with a coding agent on a repository, in a sandbox.

    PROMPT ``-`` (or ``--prompt-file -``) reads the prompt from standard input.
    PROVIDER may be a list in priority order (``bwrap,local``): the first fills up to its
    limits and the rest take the overflow (under ``hal serve``)."""
    from hal9999.cli.daemon_run import thin_run
    from hal9999.cli.prompt import read_prompt

    prompt = read_prompt(prompt, prompt_file, sys.stdin.buffer)
    args = RunArgs(
        prompt, repo, ref, agent, provider, process_manager, timeout, env, secret, raw,
        as_events, detach, priority, retries, max_cost, max_tokens, egress, egress_only, as_json,
    )  # fmt: skip
    if not thin_run(args):
        full_run(args)


def full_run(args: RunArgs) -> None:
    """``hal run`` with the config, the store and the task API (in-process or the daemon's)."""
    from hal9999.cli.notices import start_uncommitted

    pending = start_uncommitted(args.repo, args.ref)  # runs while the imports below load
    try:
        _full_run(args, pending)
    finally:
        pending.close()


def _prepare(args: RunArgs, pending: Uncommitted) -> tuple[App, RunRequest, TaskAPI]:
    """The config, the store, the request and the task API of a run, its notices printed."""
    from hal9999.cli.notices import print_notices
    from hal9999.config import working_dir
    from hal9999.credentials import parse_env_option
    from hal9999.tasks.request import RunRequest
    from hal9999.values import EgressHost, check_value

    a = app()
    names, given = parse_env_option(args.env)
    secret_names, secret_given = parse_env_option(args.secret)
    if secret_given:
        raise ConfigError(
            "--secret takes a variable name, not a value",
            hint="export NAME=... and pass --secret NAME (values never go on the command line)",
        )
    print_notices(a.sources, args.repo, args.ref, pending)
    request = RunRequest(
        prompt=args.prompt,
        repo=args.repo,
        ref=args.ref,
        agent=args.agent if args.agent is not None else a.config.default_agent,
        provider=args.provider if args.provider is not None else a.config.default_provider,
        process_manager=(
            a.config.process_manager if args.process_manager is None else args.process_manager
        ),
        timeout_s=args.timeout if args.timeout is not None else a.config.timeout_s,
        env_names=names,
        given_env=given,
        priority=args.priority,
        retries=args.retries,
        secret_names=secret_names,
        cwd=working_dir(args.repo),
        config=a.config,
        config_files=list(a.sources.files),
        max_tokens=args.max_tokens,
        max_cost_usd=args.max_cost,
        egress=[check_value(EgressHost, host, "--egress") for host in args.egress],
        egress_only=[
            check_value(EgressHost, host, "--egress-only")
            for host in args.egress_only
            if host != "none"
        ]
        if args.egress_only
        else None,
    )
    notice = offline_notice(a.config, request.agent, request.provider)
    if notice is not None and not args.as_json and not args.as_events:
        click.echo(f"hal: warning: {notice}", err=True)
    return a, request, a.tasks()


def _full_run(args: RunArgs, pending: Uncommitted) -> None:
    from hal9999.cli.notices import record_config_sources

    with collector_paused():
        a, request, api = _prepare(args, pending)
    if args.detach:
        task = run_async(api.create(request))
        record_config_sources(a.service, task, a.sources)
        print_detached(task, args.as_json)
        return
    started = Started()

    def announce(task: TaskRecord) -> None:
        started(task)
        record_config_sources(a.service, task, a.sources)
        if args.as_json:
            return
        via = ", via hal serve" if a.via_daemon else ""
        click.echo(f"hal: task {task.id} ({request.agent} on {request.provider}{via})", err=True)

    if args.as_events:
        record = run_async(run_printing_events(api, request, announce))
        sys.exit(0 if record.status == "succeeded" else exit_status_for(record.error_code) or 1)

    on_output, on_event = output_callbacks(request.agent, raw=args.raw, quiet=args.as_json)
    finish_run(
        a,
        started,
        lambda: api.run(request, on_start=announce, on_output=on_output, on_event=on_event),
        args.as_json,
    )


async def run_printing_events(
    api: TaskAPI, request: RunRequest, on_start: Callable[[TaskRecord], None]
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
