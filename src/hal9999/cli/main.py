"""The ``hal`` command line: one place that turns errors into one clear line."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hal9999 import __version__
from hal9999.cli.options import NAME, PRIORITY, RETRIES, TIMEOUT
from hal9999.config import (
    ConfigSources,
    HalConfig,
    load_config_sources,
    log_level,
    working_dir,
)
from hal9999.credentials import parse_env_option
from hal9999.errors import ConfigError, DiskFull, HalError, HomeError, UsageError, exit_status_for
from hal9999.home import HalPaths
from hal9999.providers import limits
from hal9999.redact import configure_logging
from hal9999.server.client import DaemonClient
from hal9999.store import Store, TaskRecord
from hal9999.tasks.api import TaskAPI
from hal9999.tasks.service import RunRequest, TaskService
from hal9999.values import EgressHost, check_value, is_text

if TYPE_CHECKING:
    from hal9999.cli.output import TerminalSanitizer

T = TypeVar("T")


@dataclass
class App:
    """What every command needs: config, store, the task service."""

    config: HalConfig
    store: Store
    service: TaskService
    sources: ConfigSources = field(default_factory=ConfigSources)
    """Which config files and variables applied, and what of ./hal.toml was ignored."""
    via_daemon: bool = False
    """Set once :meth:`tasks` found a running ``hal serve``."""

    def daemon(self) -> DaemonClient | None:
        """The running ``hal serve`` of this home, if any (``HAL_NO_DAEMON=1`` ignores it)."""
        from hal9999.cli.via_daemon import find_daemon

        return find_daemon(self.config, os.environ)

    def tasks(self) -> TaskAPI:
        """The task API every command calls: through ``hal serve`` when it runs, else here."""
        from hal9999.cli.via_daemon import task_api

        return task_api(self)


def app() -> App:
    """Load config and open the store for a command."""
    config, sources = load_config_sources()
    # Every log sink masks every secret hal may forward (see redact.MaskingFilter).
    from hal9999.credentials import host_log_masker

    masker = host_log_masker(config, os.environ)
    configure_logging(masker, level=log_level(os.environ))
    limits.release_if_full(config.home)  # on a full disk: room for the store to open
    store = open_store(config)
    return App(config, store, TaskService(config, store, os.environ), sources)


def open_store(config: HalConfig) -> Store:
    """The store of the config's home; an unusable home or database is a :class:`HomeError`."""
    paths = HalPaths(config.home).ensure()
    try:
        return Store.open(config.home)
    except sqlite3.Error as exc:
        raise HomeError(
            f"cannot open hal's database {paths.db}: {exc}",
            hint="if it is damaged, move it aside (tasks are forgotten, sessions stay on disk)",
            path=str(paths.db),
        ) from exc


def run_async(coro: Awaitable[T]) -> T:
    """The one bridge from the CLI into the async core."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


def emit_json(data: Any) -> None:
    """Print one JSON document: strict JSON (a non-finite number, which older databases may
    hold, becomes null instead of the invalid ``Infinity``)."""
    click.echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data


class HalGroup(click.Group):
    """A click group that prints :class:`HalError` as one line and exits with its status."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; map errors to messages and exit statuses."""
        try:
            return super().invoke(ctx)
        except HalError as exc:
            click.echo(f"hal: error: {exc.one_line()}", err=True)
            ctx.exit(exc.exit_status)
        except KeyboardInterrupt:
            click.echo("hal: interrupted", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # the safety net: a traceback is a bug, say so in one line
            from hal9999.cli.crash import internal_error

            if disk_full(exc):
                full = DiskFull(
                    "the disk holding hal's home is full",
                    hint="free space on the filesystem of HAL_HOME",
                )
                click.echo(f"hal: error: {full.one_line()}", err=True)
                ctx.exit(full.exit_status)
            error = internal_error(exc, os.environ)
            click.echo(f"hal: error: {error.one_line()}", err=True)
            ctx.exit(error.exit_status)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a write that failed for lack of disk space."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        # SQLite's "database or disk is full" carries no errno.
        if isinstance(current, sqlite3.OperationalError):
            return "full" in str(current)
        current = current.__cause__ or current.__context__
    return False


@click.group(cls=HalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hal")
def cli() -> None:
    """hal9999: hand coding work to agents in isolated sandboxes."""


def spawn_runner(app_: App, task: TaskRecord, args: list[str], env: dict[str, str]) -> int:
    """Start a detached ``hal`` process that runs the task; return its pid."""
    log_path = Path(task.session_dir) / "run" / "runner.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hal9999", "task", "_run", task.id, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **env},
            start_new_session=True,
        )
    app_.store.update_task(task.id, runner_pid=proc.pid)
    return proc.pid


@dataclass
class Started:
    """The task a foreground command started, once it exists (for the Ctrl-C message)."""

    task: TaskRecord | None = None

    def __call__(self, task: TaskRecord) -> None:
        self.task = task


def finish_run(
    app_: App, started: Started, run: Callable[[], Awaitable[TaskRecord]], as_json: bool
) -> None:
    """Run in the foreground, print the summary, exit with the outcome's status."""
    from hal9999.cli.render import summary, task_json

    try:
        record = run_async(cancel_on_sigterm(run))
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        if started.task is None:
            raise KeyboardInterrupt from exc
        task_id = started.task.id
        click.echo(
            f"\nhal: task {task_id} cancelled; session kept at {started.task.session_dir}",
            err=True,
        )
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM)
    if as_json:
        emit_json(task_json(record))
    else:
        click.echo("")
        click.echo(summary(record))
    status = 0 if record.status == "succeeded" else exit_status_for(record.error_code) or 1
    sys.exit(status)


async def cancel_on_sigterm(run: Callable[[], Awaitable[T]]) -> T:
    """Run a foreground task so that SIGTERM ends it like Ctrl-C: the run is cancelled,
    which stops the agent and gives its sandbox back, instead of the process dying with
    the sandbox and a half-made clone left behind."""
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    assert current is not None

    def terminate() -> None:
        # Once only: a second SIGTERM must not cancel the cleanup the first one started.
        if not current.cancelling():
            current.cancel("terminated by SIGTERM")

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def print_detached(task: TaskRecord, as_json: bool) -> None:
    """What ``hal run --detach`` prints: the id, or a small JSON document."""
    if as_json:
        emit_json({"id": task.id, "status": task.status, "session_dir": task.session_dir})
    else:
        click.echo(task.id)


_TERMINAL: TerminalSanitizer | None = None


def stream_to_terminal(text: str) -> None:
    """Echo agent output as it arrives, sanitised (colours kept; escape sequences that move
    the cursor, clear the screen, set the title or the clipboard dropped)."""
    global _TERMINAL
    from hal9999.cli.output import TerminalSanitizer

    if _TERMINAL is None:
        _TERMINAL = TerminalSanitizer()
    sys.stdout.write(_TERMINAL.feed(text))
    sys.stdout.flush()


def offline_notice(config: HalConfig, agent_name: str, provider: str) -> str | None:
    """Why the agent is likely to fail (it calls an API, the sandbox has no network), said
    before the agent starts; None when that is not the case."""
    from hal9999.agents.base import needs_network
    from hal9999.agents.registry import resolve_agent
    from hal9999.gateway.tasks import goes_through_gateway
    from hal9999.pool.settings import network_of, provider_settings
    from hal9999.tasks.context import offline_warning

    try:
        agent = resolve_agent(agent_name, config.agent_settings(agent_name))
        first = provider.split(",")[0].strip()
        network = network_of(config, provider_settings(config, os.environ, first))
    except HalError:
        return None  # creating the task reports these itself
    if network == "none" and needs_network(agent):
        if goes_through_gateway(config, agent, os.environ):
            return None  # the LLM gateway is the agent's way out
        return offline_warning(agent.name)
    return None


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
    as_json: bool,
) -> None:
    """Run PROMPT with a coding agent on a repository, in a sandbox.

    PROMPT ``-`` (or ``--prompt-file -``) reads the prompt from standard input.
    PROVIDER may be a list in priority order (``bwrap,local``): the first fills up to its
    limits and the rest take the overflow (under ``hal serve``)."""
    from hal9999.cli.notices import print_notices, record_config_sources
    from hal9999.cli.prompt import read_prompt

    prompt = read_prompt(prompt, prompt_file, sys.stdin.buffer)
    a = app()
    names, given = parse_env_option(env)
    secret_names, secret_given = parse_env_option(secret)
    if secret_given:
        raise ConfigError(
            "--secret takes a variable name, not a value",
            hint="export NAME=... and pass --secret NAME (values never go on the command line)",
        )
    print_notices(a.sources, repo, ref)
    request = RunRequest(
        prompt=prompt,
        repo=repo,
        ref=ref,
        agent=agent if agent is not None else a.config.default_agent,
        provider=provider if provider is not None else a.config.default_provider,
        process_manager=a.config.process_manager if process_manager is None else process_manager,
        timeout_s=timeout if timeout is not None else a.config.timeout_s,
        env_names=names,
        given_env=given,
        priority=priority,
        retries=retries,
        secret_names=secret_names,
        cwd=working_dir(repo),
        config=a.config,
        config_files=list(a.sources.files),
        max_tokens=max_tokens,
        max_cost_usd=max_cost,
        egress=[check_value(EgressHost, host, "--egress") for host in egress],
    )
    notice = offline_notice(a.config, request.agent, request.provider)
    if notice is not None and not as_json and not as_events:
        click.echo(f"hal: warning: {notice}", err=True)
    api = a.tasks()
    if detach:
        task = run_async(api.create(request))
        record_config_sources(a.service, task, a.sources)
        print_detached(task, as_json)
        return
    started = Started()

    def announce(task: TaskRecord) -> None:
        started(task)
        record_config_sources(a.service, task, a.sources)
        if as_json:
            return
        via = ", via hal serve" if a.via_daemon else ""
        click.echo(f"hal: task {task.id} ({request.agent} on {request.provider}{via})", err=True)

    if as_events:
        record = run_async(run_printing_events(api, request, announce))
        sys.exit(0 if record.status == "succeeded" else exit_status_for(record.error_code) or 1)

    on_output, on_event = output_callbacks(request.agent, raw=raw, quiet=as_json)
    finish_run(
        a,
        started,
        lambda: api.run(request, on_start=announce, on_output=on_output, on_event=on_event),
        as_json,
    )


async def run_printing_events(
    api: TaskAPI, request: RunRequest, on_start: Callable[[TaskRecord], None]
) -> TaskRecord:
    """Run the task, printing every event it records as a JSON line (``--events``)."""
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


def output_callbacks(
    agent: str, *, raw: bool, quiet: bool
) -> tuple[Callable[[str], None] | None, Callable[[Any], None] | None]:
    """How a foreground run shows the agent: nothing (``--json``), its raw output (``--raw``,
    or when stdout is not a terminal), else events rendered for a person."""
    if quiet:
        return None, None
    if raw or not sys.stdout.isatty():
        return stream_to_terminal, None
    from hal9999.cli.output import EventRenderer, shows_raw_output

    return None, EventRenderer(sys.stdout, show_output=shows_raw_output(agent))


def main() -> None:
    """Console entry point: usage errors are one line too, with the usage status 2."""
    import hal9999.cli.auth  # noqa: F401  (registers hal auth)
    from hal9999.cli import (  # noqa: F401  (registers the subcommands)
        approvals,
        dashboard,
        doctor,
        hive,  # hal agent, hal msg, hal hive, hal vacuum
        image,
        pool,
        questions,
        requests,
        serve,
        task,
        trust,
    )

    for position, arg in enumerate(sys.argv[1:], 1):
        if not is_text(arg):
            click.echo(f"hal: error: argument {position} is not UTF-8 text "
                       "(pass names, paths and values as UTF-8)", err=True)  # fmt: skip
            sys.exit(UsageError.exit_status)
    try:
        status = cli.main(prog_name="hal", standalone_mode=False)
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `hal` or `hal task`: the help
            exc.show()
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "hal"
        click.echo(f"hal: error: {exc.format_message()} (see: {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("hal: interrupted", err=True)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    # Run the canonical module, not this __main__ copy, so subcommands register on one group.
    from hal9999.cli import main as canonical

    canonical.main()
