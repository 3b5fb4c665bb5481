"""How CLI commands go through a running ``hal serve`` instead of working in-process."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999.agents.registry import resolve_agent
from hal9999.config import HalConfig
from hal9999.credentials import forwarded_env
from hal9999.errors import HalError, exit_status_for
from hal9999.events.reader import follow_events, follow_text
from hal9999.server.client import DaemonClient
from hal9999.store import Store, TaskRecord
from hal9999.tasks.service import RunRequest
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE

if TYPE_CHECKING:
    from hal9999.cli.main import App

NO_DAEMON_VAR = "HAL_NO_DAEMON"
"""Set to 1 to work in-process even while a daemon runs."""


def find_daemon(config: HalConfig, environ: Mapping[str, str]) -> DaemonClient | None:
    """The running daemon of this home, unless ``HAL_NO_DAEMON`` is set."""
    if environ.get(NO_DAEMON_VAR, "") not in ("", "0"):
        return None
    return DaemonClient.find(config.home)


def client_secrets(
    config: HalConfig, request: RunRequest, environ: Mapping[str, str]
) -> dict[str, str]:
    """Secret values the daemon needs from this shell: ``--env`` names (which must be set),
    ``forward_env`` and the agent's API key variable (when set). Sent over the private
    socket, held in the daemon's memory for the run, never stored."""
    values = dict(request.given_env)
    names = [*request.env_names, *request.secret_names]
    values.update(forwarded_env([n for n in names if n not in values], environ))
    optional = [*config.forward_env, *config.secrets]
    try:
        settings = config.agent_settings(request.agent)
        resolve_agent(request.agent, settings)
        if settings.api_key_env:
            optional.append(settings.api_key_env)
    except HalError:
        pass  # the daemon reports a bad agent itself
    for name in optional:
        if name in environ and name not in values:
            values[name] = environ[name]
    return values


def run_body(
    request: RunRequest, env: dict[str, str], priority: int, retries: int
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/tasks``."""
    return {
        "prompt": request.prompt,
        "repo": request.repo,
        "ref": request.ref,
        "agent": request.agent,
        "provider": request.provider,
        "process_manager": request.process_manager,
        "timeout_s": request.timeout_s,
        "env_names": request.env_names,
        "env": env,
        "literal_env": sorted(request.given_env),
        "secret_names": request.secret_names,
        "cwd": str(request.cwd),
        "priority": priority,
        "retries": retries,
    }


def record(data: Any) -> TaskRecord:
    """A task from an API response."""
    return TaskRecord.model_validate(data)


async def follow_until_done(
    store: Store, task: TaskRecord, on_output: Any | None, on_event: Any | None = None
) -> TaskRecord:
    """Stream the task's log (to ``on_output``) or its events (to ``on_event``) until it
    leaves the active states."""
    session = Session(Path(task.session_dir))

    def done() -> bool:
        return store.get_task(task.id).status not in ACTIVE

    if on_event is not None:
        async for event in follow_events(session.events, stop=done, poll=0.05):
            on_event(event)
        return store.get_task(task.id)
    async for chunk in follow_text(session.log, stop=done, poll=0.02):
        if on_output is not None:
            on_output(chunk)
    return store.get_task(task.id)


def run_via_daemon(
    app_: App,
    client: DaemonClient,
    request: RunRequest,
    *,
    priority: int,
    detach: bool,
    as_json: bool,
    raw: bool = False,
    events: bool = False,
) -> None:
    """``hal run`` through the daemon: queue the task, then return or follow it to its end."""
    import click

    from hal9999.cli.main import print_detached, run_async

    env = client_secrets(app_.config, request, os.environ)
    body = run_body(request, env, priority, request.retries)
    task = record(run_async(client.call("POST", "/v1/tasks", body)))
    if detach:
        print_detached(task, as_json)
        return
    if not as_json:
        click.echo(
            f"hal: task {task.id} ({request.agent} on {request.provider}, via hal serve)", err=True
        )
    finish_daemon_run(app_, client, task, as_json, raw=raw, events=events)


def finish_daemon_run(
    app_: App,
    client: DaemonClient,
    task: TaskRecord,
    as_json: bool,
    *,
    raw: bool = False,
    events: bool = False,
) -> None:
    """Follow a daemon-run task to its end, print the summary, exit with its status."""
    import click

    from hal9999.cli.main import emit_json, output_callbacks, run_async
    from hal9999.cli.render import summary, task_json

    on_output, on_event = output_callbacks(task.agent, raw=raw, quiet=as_json or events)
    if events:
        from hal9999.cli.output import jsonl_writer

        on_event = jsonl_writer(sys.stdout)
    try:
        final = run_async(follow_until_done(app_.store, task, on_output, on_event))
    except KeyboardInterrupt:
        run_async(client.call("POST", f"/v1/tasks/{task.id}/cancel"))
        click.echo(f"\nhal: task {task.id} cancelled; session kept at {task.session_dir}", err=True)
        sys.exit(130)
    if as_json:
        emit_json(task_json(final))
    elif not events:
        click.echo("")
        click.echo(summary(final))
    sys.exit(0 if final.status == "succeeded" else exit_status_for(final.error_code) or 1)
