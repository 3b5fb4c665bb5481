"""What every CLI command shares, without click: the config and the store (:class:`App`), the
bridge into the async core, the one line a failure prints, the foreground run's ending.

Apart from :mod:`hal9999.cli.main` (click's command tree) so that an in-process ``hal run``
whose options :mod:`hal9999.cli.run_argv` reads runs without click and what it imports.
It prints through :func:`hal9999.cli.echo.echo`, which writes what
``click.echo`` would. :mod:`hal9999.cli.main` re-exports every name here for the commands.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from hal9999.cli.echo import after_agent_output, echo, stream_to_terminal, to_devnull
from hal9999.cli.echo import emit_json as emit_json
from hal9999.errors import HalError, HomeError, TaskCancelled, TaskNotFound

if TYPE_CHECKING:
    from hal9999.config import ConfigSources, HalConfig
    from hal9999.server.client import DaemonClient
    from hal9999.store import Store, TaskRecord
    from hal9999.tasks.api import TaskAPI
    from hal9999.tasks.plugins import Plugins
    from hal9999.tasks.service import TaskService

T = TypeVar("T")


class App:
    """What every command needs: config, store, the task service. (A plain class, as is
    :class:`Started`: ``dataclasses`` and ``pathlib`` are not imported by ``hal --help``.)"""

    def __init__(
        self,
        config: HalConfig,
        store: Store,
        service: TaskService | None = None,
        sources: ConfigSources | None = None,
        via_daemon: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self._service = service
        self._plugins: Plugins | None = service.plugins if service is not None else None
        self.sources = _no_sources() if sources is None else sources
        """Which config files and variables applied, and what of ./hal.toml was ignored."""
        self.via_daemon = via_daemon
        """Set once :meth:`tasks` found a running ``hal serve``."""

    @property
    def service(self) -> TaskService:
        """The in-process task service, built on first use: a command that reads the store
        (``hal task show``, ``logs``, ``events``) or asks a running daemon never needs it,
        and :mod:`hal9999.tasks.service` with what it imports would be most of such a
        command's start."""
        if self._service is None:
            from hal9999.app import local_service

            self._service = local_service(self.config, self.store, os.environ, self.plugins)
        return self._service

    @property
    def plugins(self) -> Plugins:
        """This command's providers and process managers, each built once (the service's)."""
        if self._plugins is None:
            from hal9999.tasks.plugins import Plugins

            self._plugins = Plugins(self.config)
        return self._plugins

    def find(self, task_id: str) -> TaskRecord:
        """One task by id or unique prefix, reconciled, as :meth:`TaskService.find` gives
        it; the task service is built only for a task in flight whose runner died (the one
        case :meth:`TaskService.reconcile` changes)."""
        from hal9999.tasks.alive import runner_alive
        from hal9999.tasks.state import ACTIVE, TaskStatus

        record = self.store.find_task(task_id)
        if (
            record.status not in ACTIVE
            or record.status == TaskStatus.QUEUED
            or runner_alive(record.runner_pid, record.runner_started)
        ):
            return record
        return self.service.reconcile(record)

    def daemon(self) -> DaemonClient | None:
        """The running ``hal serve`` of this home, if any (``HAL_NO_DAEMON=1`` ignores it)."""
        from hal9999.cli.via_daemon import find_daemon  # light: the task API is imported late

        return find_daemon(self.config, os.environ)

    def tasks(self) -> TaskAPI:
        """The task API every command calls: through ``hal serve`` when it runs, else here."""
        from hal9999.cli.via_daemon import task_api

        return task_api(self)


def _no_sources() -> ConfigSources:
    from hal9999.config import ConfigSources

    return ConfigSources()


def app() -> App:
    """Load config and open the store for a command."""
    from hal9999.config import load_config_sources, log_level
    from hal9999.credentials import host_log_masker
    from hal9999.providers import limits
    from hal9999.redact import configure_logging

    config, sources = load_config_sources()
    # Every log sink masks every secret hal may forward (see redact.MaskingFilter).
    masker = host_log_masker(config, os.environ)
    configure_logging(masker, level=log_level(os.environ))
    limits.release_if_full(config.home)  # on a full disk: room for the store to open
    store = open_store(config)
    return App(config, store, sources=sources)


def open_store(config: HalConfig) -> Store:
    """The store of the config's home; an unusable home or database is a :class:`HomeError`."""
    import sqlite3

    from hal9999.home import HalPaths
    from hal9999.store import Store

    try:
        paths = HalPaths(config.home).ensure()
    except HomeError:
        paths = HalPaths(config.home)
        if not os.path.isfile(paths.db) or os.access(paths.home, os.W_OK):  # False on OSError
            raise
        # A home it cannot write (a read-only mount): read what is there; a write says why
        # it cannot be done (hal9999.home.not_writable).
        return Store.open_read_only(config.home)
    try:
        return Store.open(config.home)
    except sqlite3.Error as exc:
        raise HomeError(
            f"cannot open hal's database {paths.db}: {exc}",
            hint="if it is damaged, move it aside (tasks are forgotten, sessions stay on disk)",
            path=str(paths.db),
        ) from exc


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block without the cyclic garbage collector, then freeze what is alive.

    For the start of a command that loads its modules, config and store before it works:
    imports make objects by the hundred thousand and next to no garbage cycles, and the
    collector's passes over them are a visible share of an in-process ``hal run``'s CPU.
    Frozen (:func:`gc.freeze`), the modules' objects are not walked again by the
    collections of the command's own work; a cycle left in the block is kept, as at exit
    (:func:`hal9999.cli.entry.exit_lightly`)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


DAEMON_YOUNG_THRESHOLD = 10_000
"""Allocations (less deallocations) between two collections of the youngest generation in
the daemon; Python's default is 700."""


def collect_less_often() -> None:
    """Let the cyclic collector run less often in a long-lived process that does the same
    work over and over (the daemon). A task's objects are freed by their reference counts
    within it; at 700 the youngest generation is collected about once a task, each pass
    walking every container a running task holds, and the older generations' passes
    walk them again. At 10,000 the same garbage is found
    in fewer, larger passes; the older generations' thresholds are kept."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, DAEMON_YOUNG_THRESHOLD), middle, old)


def run_async(coro: Awaitable[T]) -> T:
    """The one bridge from the CLI into the async core; its subprocesses are waited for
    with pidfds, not a thread each (see :mod:`hal9999.children`)."""
    import asyncio

    from hal9999.children import pidfd_child_watcher

    async def main() -> T:
        return await coro

    with pidfd_child_watcher():
        return asyncio.run(main())


def report_failure(exc: Exception | KeyboardInterrupt, *, as_json: bool = False) -> int:
    """Print the one line for what a command raised; the exit status it gets. A
    :class:`HalError` is its own line; anything else is the machine's state or, the safety
    net, a bug said in one line (a traceback is a bug). With ``as_json`` (the command was
    given ``--json``) the error is also one JSON object on stdout, in the API's shape
    (:func:`error_json`), so a script reading stdout gets something to parse."""
    if isinstance(exc, BrokenPipeError) and stdout_closed():
        # Whoever read the output went away (`hal task events ID | head`): no error of hal's
        # to report. Ended quietly, as a process killed by SIGPIPE, and with stdout on
        # /dev/null so the flush at exit does not fail once more.
        to_devnull(sys.stdout)
        return 128 + 13  # SIGPIPE
    from hal9999.cli.output import error_line  # it may quote any bytes

    if isinstance(exc, KeyboardInterrupt):
        error: HalError = TaskCancelled("interrupted")
        echo("hal: interrupted", err=True)
    else:
        if isinstance(exc, HalError):
            error = exc
        else:
            from hal9999.cli.crash import internal_error
            from hal9999.failures import known_failure

            error = known_failure(exc) or internal_error(exc, os.environ)
        if error.code == "output_failed":
            to_devnull(sys.stdout)  # its buffer, flushed at exit, would fail once more
        echo(f"hal: error: {error_line(error.one_line())}", err=True)
    if as_json:
        error_json(error)
    return error.exit_status


def cancelled(task_id: str, session_dir: object) -> HalError:
    """The error of a foreground run cancelled by Ctrl-C or SIGTERM, for ``--json``."""
    return TaskCancelled(f"task {task_id} cancelled", hint=f"session kept at {session_dir}")


def error_json(error: HalError) -> None:
    """Print ``error`` as the one JSON object of a failed ``--json`` command: ``{"error":
    {"code", "message", "hint"}}`` on one line, the shape of the API's error bodies; a long
    value in the message is cut as on the line (click quotes a 100 KB value whole)."""
    from hal9999.cli.output import shorten_values

    body = error.to_dict()
    for key in ("message", "hint"):
        if isinstance(body[key], str):
            body[key] = shorten_values(body[key])
    import json

    try:
        # One line: whole-document readers parse it, and so do readers of a JSON-lines
        # command's output (`hal task events --json`), where an indented object would not.
        echo(json.dumps({"error": body}))
    except (OSError, ValueError):  # no stdout to write to: the line on stderr says it
        to_devnull(sys.stdout)


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reading end is closed (writing to it fails: EPIPE)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no stdout at all
        return False


def spawn_runner(app_: App, task: TaskRecord, args: list[str], env: dict[str, str]) -> int:
    """Start a detached ``hal`` process that runs the task; return its pid."""
    import subprocess
    import threading
    from pathlib import Path

    from hal9999.pymodule import module_argv

    log_path = Path(task.session_dir) / "run" / "runner.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            module_argv("hal9999", "task", "_run", task.id, *args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **env},
            start_new_session=True,
        )
    # Reaped whenever it ends: a process that outlives its runner (a long-lived caller of
    # the task API) keeps no zombie of it.
    threading.Thread(target=proc.wait, name=f"reap-{task.id}", daemon=True).start()
    # Handed over only if this process still holds it: the runner may have claimed it
    # (from this process) and even finished already.
    app_.store.swap_runner(task.id, os.getpid(), proc.pid)
    return proc.pid


class Started:
    """The task a foreground command started, once it exists (for the Ctrl-C message)."""

    def __init__(self) -> None:
        self.task: TaskRecord | None = None

    def __call__(self, task: TaskRecord) -> None:
        self.task = task


def finish_run(
    app_: App, started: Started, run: Callable[[], Awaitable[TaskRecord]], as_json: bool
) -> None:
    """Run in the foreground, print the summary, exit with the outcome's status."""
    import asyncio
    import signal

    from hal9999.cli.task_table import (
        kept,
        removed,
        run_end,
        summary,  # not cli.render: its event lines go unused
    )

    try:
        record = run_async(cancel_on_sigterm(run))
    except TaskNotFound:
        if started.task is None or app_.store.has_task(started.task.id):
            raise
        removed(started.task.id)
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        if started.task is None:
            raise KeyboardInterrupt from exc
        task_id = started.task.id
        echo(
            f"\nhal: task {task_id} cancelled; session kept at {started.task.session_dir}",
            err=True,
        )
        if as_json:
            error_json(cancelled(task_id, started.task.session_dir))
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM)
    status, line = run_end(
        record.id, record.status, record.error_code,
        record.status == "succeeded" or kept(record.session_dir, app_.store.has_task(record.id)),
    )  # fmt: skip
    if as_json:
        from hal9999.cli.render import task_json

        emit_json(task_json(record))
    else:
        echo(after_agent_output())
        echo(summary(record))
    if line:
        echo(line, err=True)
    sys.exit(status)


async def cancel_on_sigterm(run: Callable[[], Awaitable[T]]) -> T:
    """Run a foreground task so that SIGTERM ends it like Ctrl-C: the run is cancelled,
    which stops the agent and gives its sandbox back, instead of the process dying with
    the sandbox and a half-made clone left behind."""
    import asyncio
    import signal

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


def offline_notice(config: HalConfig, agent_name: str, provider: str) -> str | None:
    """Why the agent is likely to fail (it calls an API, the sandbox has no network), said
    before the agent starts; None when that is not the case."""
    from hal9999.agents.base import needs_network
    from hal9999.agents.registry import resolve_agent
    from hal9999.pool.settings import network_of, provider_settings

    try:
        agent = resolve_agent(agent_name, config.agent_settings(agent_name))
        first = provider.split(",")[0].strip()
        network = network_of(config, provider_settings(config, os.environ, first))
    except HalError:
        return None  # creating the task reports these itself
    if network == "none" and needs_network(agent):
        from hal9999.gateway.tasks import goes_through_gateway

        if goes_through_gateway(config, agent, os.environ):
            return None  # the LLM gateway is the agent's way out
        from hal9999.tasks.context import offline_warning  # the run's context: heavy

        return offline_warning(config, agent)
    return None


def output_callbacks(
    agent: str, *, raw: bool, quiet: bool, said: str | None = None
) -> tuple[Callable[[str], None] | None, Callable[[Any], None] | None]:
    """How a foreground run shows the agent: nothing (``--json``), its raw output (``--raw``,
    or when stdout is not a terminal), else events rendered for a person; and, each way,
    hal's notes on stderr (:mod:`hal9999.cli.runnotes`) but ``said``, printed already."""
    from hal9999.cli.runnotes import with_notes

    if quiet:
        return None, with_notes(None, said=said)
    if raw or not sys.stdout.isatty():
        return stream_to_terminal, with_notes(None, said=said)
    from hal9999.cli.output import EventRenderer, shows_raw_output

    renderer = EventRenderer(sys.stdout, show_output=shows_raw_output(agent))
    return None, with_notes(renderer, said=said)
