"""``hal run`` through a running ``hal serve``, thin: post the task, show its events as JSON.

The full path of ``hal run`` builds the layered config, the store, the task service and the
daemon client's models (pydantic, about 40 model classes, asyncio): about 370 modules and
most of the client's CPU, for a command that only posts a request and prints what comes
back. This path does the same with plain dictionaries and a blocking
socket, and is taken only where it sends, prints and exits exactly as the full path:

- a daemon runs for the home (and ``HAL_NO_DAEMON`` is not set);
- the config is the defaults with at most ``HAL_HOME``, ``HAL_AGENT``, ``HAL_PROVIDER`` and
  ``HAL_PROCESS_MANAGER`` (:mod:`hal9999.cli.thin_config`): no config file, no
  ``./hal.toml``, no other ``HAL_*`` variable;
- the agent is a command template: a preset's network notice, API key variable and event
  rendering need the agent registry (presets take the full path);
- not ``--events`` (its lines are the event models' own JSON) and no ``--egress`` or
  ``--egress-only`` (checked by the config's field types).

Anything else returns ``False`` before printing or sending anything, and the full path runs.
The config sent is the defaults' JSON (``tests/cli/test_daemon_run.py`` keeps it equal to
the model's) and the daemon records which config applied (``config_sources``), as the full
client does in the task's events.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from types import FrameType, SimpleNamespace

from hal9999.agents.template import is_template
from hal9999.cli.echo import after_agent_output, echo, emit_json, stream_to_terminal
from hal9999.cli.task_table import one_line, summary
from hal9999.cli.thin_config import NAME_AND_THIN_VARS, NAME_VARS, home_path, names_set, no_daemon
from hal9999.envvars import forwarded_env, parse_env_option
from hal9999.errors import ConfigError, HalError, TaskNotFound, UsageError
from hal9999.runoptions import RunArgs, run_wire
from hal9999.workdir import current_path, working_path

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any, NamedTuple, NoReturn, cast

    from hal9999.cli.notices import Uncommitted
    from hal9999.cli.task_table import TaskSummary  # noqa: F401  # in a cast
    from hal9999.server.client import DaemonClient

    OnData = Callable[[Mapping[str, Any]], None]
else:
    import _signal as signal  # the C module: signal.py builds three enums at import

    from hal9999.lighttyping import NamedTuple, cast

ORIGIN_KEYS = {"HAL_HOME": "home", **NAME_VARS}
"""The config key each variable this path applies sets (``config.ENV_KEYS``' own)."""
RUN_VARS = NAME_AND_THIN_VARS
"""Every ``HAL_*`` variable this path understands."""


def default_config(home: str | Path) -> dict[str, Any]:
    """``HalConfig(home=home).model_dump(mode="json")``, without the model (a test keeps
    them equal)."""
    return {
        "home": str(home), "default_agent": "claude", "default_provider": "bwrap",
        "process_manager": "tmux", "timeout_s": 3600.0, "network": "none",
        "resources": {
            "cpus": None, "memory_mb": None, "pids": None, "disk_mb": None, "disk_files": None,
        },
        "totals": {"memory_mb": None, "pids": None},
        "agents": {}, "providers": {}, "credentials": [], "forward_env": [], "secrets": [],
        "pool": {}, "scheduler": {},
        "gateway": {
            "enabled": True, "concurrency": 8, "requests_per_minute": None, "max_retries": 6,
            "max_cost_usd": None, "max_tokens": None, "daily_max_cost_usd": None,
            "daily_max_tokens": None, "assumed_max_output_tokens": 128000, "models": None,
            "prices": {}, "ca_file": None, "egress": [], "provider_egress": {},
            "egress_only": None, "store_bodies": False,
        },
        "hive": {},
        "forges": {},
    }  # fmt: skip


def simple_config(
    environ: Mapping[str, str], cwd: str | Path | None
) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    """The config's JSON and the ``HAL_*`` variables that set it, when it is the defaults
    and name variables; None when the full config must be read (or must report an error)."""
    home = home_path(environ, None if cwd is None else str(cwd), RUN_VARS)
    if home is None:
        return None
    names = names_set(environ)
    if names is None:
        return None
    config = default_config(home)
    applied = ["HAL_HOME"] if environ.get("HAL_HOME") else []
    for var, value in names.items():
        config[NAME_VARS[var]] = value
        applied.append(var)
    return config, tuple(applied)


class Plan(NamedTuple):
    """What a thin run needs once it is known to apply."""

    client: DaemonClient
    config: dict[str, Any]
    applied: tuple[str, ...]
    agent: str


def thin_daemon(
    environ: Mapping[str, str],
) -> tuple[DaemonClient, dict[str, Any], tuple[str, ...]] | None:
    """The running daemon, the config's JSON and the variables that set it, when a command
    may talk to the daemon without the config; None when the full path must run it."""
    if no_daemon(environ):
        return None
    found = simple_config(environ, current_path())
    if found is None:
        return None
    config, applied = found
    # The daemon's client only here: an in-process run (HAL_NO_DAEMON) never needs it.
    from hal9999.server.client import DaemonClient

    try:
        client = DaemonClient.find(config["home"])
    except OSError:
        return None  # a home that cannot be read (a file, say): the full path says why
    return None if client is None else (client, config, applied)


def check_options(args: RunArgs) -> None:
    """Refuse options that contradict each other: two ways of printing the run, a way of
    printing a run ``--detach`` does not wait for, ``--egress-only none`` with a host."""
    modes = (("--raw", args.raw), ("--events", args.as_events), ("--json", args.as_json))
    shown = [flag for flag, on in modes if on]
    if len(shown) > 1:
        raise UsageError(
            f"{shown[0]} and {shown[1]} cannot be combined", hint="each prints the run its own way"
        )
    if args.detach and (args.raw or args.as_events):
        raise UsageError(
            f"--detach and {'--raw' if args.raw else '--events'} cannot be combined",
            hint="--detach returns at once; follow the task with hal task logs -f ID",
        )
    if "none" in args.egress_only and len(set(args.egress_only)) > 1:
        raise UsageError(
            "--egress-only none and --egress-only HOST cannot be combined",
            hint="'none' allows no host: give it alone, or only hosts",
        )


def plan(args: RunArgs, environ: Mapping[str, str]) -> Plan | None:
    """The daemon and config of a thin run; None when the full path must run it."""
    check_options(args)  # both paths plan first
    if args.as_events or args.egress or args.egress_only or args.issue:
        return None  # (an issue's: the full client sends the shell's forge tokens)
    if args.agent is not None and not is_template(args.agent):
        return None  # before looking for the daemon: a preset never runs here
    found = thin_daemon(environ)
    if found is None:
        return None
    client, config, applied = found
    agent = args.agent if args.agent is not None else str(config["default_agent"])
    if not is_template(agent):
        return None
    return Plan(client, config, applied, agent)


def thin_run(args: RunArgs, environ: Mapping[str, str] = os.environ) -> bool:
    """Run ``hal run`` through the daemon when this path applies (then it exits); False,
    with nothing printed or sent, when the full path must."""
    found = plan(args, environ)
    if found is None:
        return False
    run_planned(args, found, environ)


def env_options(args: RunArgs) -> tuple[list[str], dict[str, str], list[str]]:
    """``--env``'s names and given values, and ``--secret``'s names (one never takes a value):
    read alike by the thin client and the full path."""
    names, given = parse_env_option(args.env)
    secret_names, secret_given = parse_env_option(args.secret, "--secret")
    if secret_given:
        raise ConfigError(
            "--secret takes a variable name, not a value",
            hint="export NAME=... and pass --secret NAME (values never go on the command line)",
        )
    return names, given, secret_names


def run_planned(args: RunArgs, found: Plan, environ: Mapping[str, str]) -> NoReturn:
    """Run ``hal run`` through the daemon of ``found``; exits with the run's status."""
    # From here on, what the full path does, in its order and with its errors.
    names, given, secret_names = env_options(args)
    try:
        body = request_body(args, found, environ, (names, given), secret_names)
    except Exception:
        _note(args)  # the full path says it before this error
        raise
    provider = str(body["provider"])
    client = found.client
    if args.detach:
        task = _post(client, body, args)
        if args.as_json:
            emit_json({"id": task["id"], "status": task["status"],
                       "session_dir": task["session_dir"]})  # fmt: skip
        else:
            echo(task["id"])
        sys.exit(0)
    with _sigterm_raises():
        try:
            task = _post(client, body, args)
        except _Terminated as exc:
            raise KeyboardInterrupt from exc  # no task yet: "interrupted", as the full path
        if not args.as_json:
            echo(f"hal: task {task['id']} ({one_line(found.agent)} on {provider}, via hal serve)",
                 err=True)  # fmt: skip
        on_output, on_event = _callbacks(raw=args.raw, quiet=args.as_json)
        try:
            record = see_through(client, task["id"], on_output, on_event)
        except TaskNotFound:  # the task it started and followed: removed meanwhile
            from hal9999.cli.task_table import removed

            removed(task["id"])
        except (KeyboardInterrupt, _Terminated) as exc:
            # Ctrl-C (or SIGTERM) of a foreground run cancels the task, as the full path.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not stop this
            with contextlib.suppress(HalError):
                client.request("POST", f"/v1/tasks/{task['id']}/cancel")
            echo(
                f"\nhal: task {task['id']} cancelled; session kept at {task['session_dir']}",
                err=True,
            )
            if args.as_json:
                from hal9999.cli.app import cancelled, error_json

                error_json(cancelled(task["id"], task["session_dir"]))
            sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM)
    from hal9999.cli.task_table import kept, run_end

    # A task removed before the daemon was asked for its end is an error (task_not_found,
    # above); one removed since has no session left.
    status, line = run_end(
        record["id"], record["status"], record.get("error_code"),
        record["status"] == "succeeded" or kept(record["session_dir"], True),
    )  # fmt: skip
    if args.as_json:
        emit_json(record)
    else:
        echo(after_agent_output())
        echo(summary(cast("TaskSummary", SimpleNamespace(**record))))
    if line:
        echo(line, err=True)
    sys.exit(status)


def _post(client: DaemonClient, body: dict[str, Any], args: RunArgs) -> dict[str, Any]:
    """``POST /v1/tasks``, with the host ``git status`` (and its imports) done while the
    daemon creates the task, off the path to it; the uncommitted-changes line, which the
    full path prints before posting, is printed before anything the outcome prints."""
    try:
        sent = client.send("POST", "/v1/tasks", body)
    except (KeyboardInterrupt, _Terminated):
        raise
    except BaseException:
        _note(args)
        raise
    try:
        from hal9999.cli.notices import start_uncommitted

        pending = start_uncommitted(args.repo, args.ref, args.issue)
    except BaseException:
        sent.close()
        raise
    try:
        task = sent.answer()
    except (KeyboardInterrupt, _Terminated):
        pending.close()
        raise
    except BaseException:
        _note(args, pending)
        raise
    _note(args, pending)
    return cast("dict[str, Any]", task)


def _note(args: RunArgs, pending: Uncommitted | None = None) -> None:
    from hal9999.cli.notices import print_uncommitted

    print_uncommitted(args.repo, args.ref, pending, args.issue)


def request_body(
    args: RunArgs,
    found: Plan,
    environ: Mapping[str, str],
    env: tuple[list[str], dict[str, str]],
    secret_names: list[str],
) -> dict[str, Any]:
    """The body of ``POST /v1/tasks`` (:func:`hal9999.runoptions.run_wire`), with the
    values of this shell's variables, and which config applied (``config_sources``)."""
    names, given = env
    # A template agent calls no API (no network notice, no key variable); the config forwards
    # nothing: the secrets are the --env and --secret names (client_secrets' rule).
    wanted = [*names, *secret_names]
    return run_wire(
        args,
        found.config,
        agent=found.agent,
        env_names=names,
        env={**given, **forwarded_env([n for n in wanted if n not in given], environ)},
        upstream_keys={},  # a template agent names no API key
        literal_env=sorted(given),
        secret_names=secret_names,
        cwd=working_path(args.repo),
        config=found.config,
        config_files=[],
        # The variables that set it, so an error of the daemon's names one as hal run would.
        config_origin=[{"key": [ORIGIN_KEYS[var]], "source": var} for var in found.applied],
        config_sources={
            "describe": "config: " + (", ".join(found.applied) or "defaults"),
            "notice": None,
        },
    )


def _callbacks(*, raw: bool, quiet: bool) -> tuple[Callable[[str], None] | None, OnData | None]:
    # app.output_callbacks for a template agent, whose output has no structure to render.
    from hal9999.cli.runnotes import with_notes

    if quiet:
        return None, with_notes(None)
    if raw or not sys.stdout.isatty():
        return stream_to_terminal, with_notes(None)
    from hal9999.cli.output import EventRenderer

    return None, with_notes(EventRenderer(sys.stdout, show_output=True))


def see_through(
    client: DaemonClient,
    task_id: str,
    on_output: Callable[[str], None] | None,
    on_event: OnData | None,
) -> dict[str, Any]:
    """Follow the task's events to its end (the daemon retries it); its final record.
    ``DaemonTaskAPI.follow``'s long poll, blocking, on the events' JSON."""
    from hal9999.events.own import HAL_OWN
    from hal9999.server.client import FOLLOW_WAIT_S, RECONNECT_S, DaemonUnavailable

    after_seq = 0
    gone_since: float | None = None
    while True:
        # Woken only by what is shown (the agent's events) and the run's end: hal's own
        # events would each cost a request on both sides (a daemon from before wakes on all).
        query = {"after_seq": after_seq, "wait": FOLLOW_WAIT_S, "wake": "agent"}
        try:
            page = client.request("GET", f"/v1/tasks/{task_id}/events", query=query)
        except DaemonUnavailable as exc:
            # A restarting daemon (it adopts running agents): keep following a while, saying
            # so (a minute of silence looked like a hang), then name the task to go back to.
            now = time.monotonic()
            if gone_since is None:
                gone_since = now
                echo(f"hal: note: {exc.message}; waiting up to {RECONNECT_S:g} s for it to "
                     f"come back (task {task_id} goes on without it)", err=True)  # fmt: skip
            if now - gone_since > RECONNECT_S:
                raise DaemonUnavailable(
                    f"the hal daemon went away while task {task_id} ran and did not come back"
                    f" ({exc})",
                    hint=f"start it with `hal serve --detach`: it brings the task's work back;"
                    f" then `hal task show {task_id}`",
                ) from exc
            time.sleep(0.5)
            continue
        gone_since = None
        for event in page["events"]:
            after_seq = max(after_seq, int(event["seq"]))
            if on_output is not None and event["type"] == "output":
                on_output(event["text"])
            if on_event is not None and event["type"] not in HAL_OWN:
                on_event(event)
        if page["done"]:
            break
    # The daemon's last answer carries the record (one from before it did: asked for).
    record = page.get("task") or client.request("GET", f"/v1/tasks/{task_id}")
    return cast("dict[str, Any]", record)


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, so a foreground run ends like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_raises() -> Any:
    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once, as cancel_on_sigterm
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
