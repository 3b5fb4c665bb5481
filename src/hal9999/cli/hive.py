"""``hal agent ...``, ``hal msg ...``, ``hal hive init`` and ``hal vacuum``: the hive.

The hive runs in ``hal serve`` (its turn loop wakes agents); commands that change agents
go through the daemon. Reading (list, show, stats, inbox, logs) works without it, from the
store; ``hal msg send`` without the daemon commits the message, and the daemon delivers it
when it runs.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import click

from hal9999.cli.main import App, app, cli, emit_json, run_async
from hal9999.cli.options import NAME, json_option
from hal9999.errors import HalError, HiveError, RepoError, UsageError
from hal9999.server.client import DaemonClient

MANAGER = "manager"
MANAGER_ROLE = """\
You are the manager of a hive of coding agents run by hal. You wake when something arrives in
your mailbox: a message from the operator, a crash notice of an agent, an answer, an approval
result. You coordinate: you ask for new agents (a spawn request goes to the operator for
approval), see the agents and their state, see open threads (pending approvals and unanswered
questions across the hive), stop or restart agents (with approval), and message anyone.
Keep durable notes in NOTES.md of your workspace.
"""


def _daemon(a: App, what: str) -> DaemonClient:
    client = a.daemon()
    if client is None:
        raise HalError(
            f"{what} needs the hive's turn loop, which runs in hal serve (not running)",
            hint="start it with `hal serve --detach`",
        )
    return client


def _call(a: App, what: str, method: str, path: str, body: dict[str, Any] | None = None,
          query: dict[str, Any] | None = None) -> Any:  # fmt: skip
    return run_async(_daemon(a, what).call(method, path, body, query))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _read_role(role: Path | None) -> str | None:
    """The role file's text: read up to what a role may hold (``--role /dev/zero`` read
    until memory ran out), and not blank (an empty file gave the default role silently)."""
    if role is None:
        return None
    from hal9999.hive.agents import ROLE_MAX_CHARS

    too_long = UsageError(
        f"the role file {role} has more than {ROLE_MAX_CHARS} characters",
        hint="shorten the role; put long material in the agent's repository",
    )
    try:
        with role.open("rb") as file:
            data = file.read(4 * ROLE_MAX_CHARS + 1)  # UTF-8: at most 4 bytes a character
        text = data.decode("utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot read the role file {role}: {exc.strerror or exc}",
            hint="pass --role a readable text file",
        ) from exc
    except UnicodeDecodeError as exc:
        if len(data) > 4 * ROLE_MAX_CHARS:
            raise too_long from exc
        raise UsageError(
            f"the role file {role} is not UTF-8 text", hint="convert it to UTF-8"
        ) from exc
    if len(text) > ROLE_MAX_CHARS:
        raise too_long
    if not text.strip():
        raise UsageError(
            f"the role file {role} is empty",
            hint="write the agent's role in it, or leave out --role for the default role",
        )
    return text


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit (s, m, h, d), e.g. ``10m``."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], None)
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise UsageError(
            f"{text!r} is not a duration", hint="give a number of seconds or e.g. 90s, 10m, 2h"
        ) from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"{text!r} is not a positive duration", hint="e.g. --warm-idle 10m")
    return seconds


def _agent_line(data: dict[str, Any]) -> str:
    from hal9999.cli.approvals import one_line, plain

    detail = f"  ({one_line(data['detail'])})" if data.get("detail") else ""
    kind = " [manager]" if data.get("kind") == "manager" else ""
    # Sanitised: the detail can quote a task's error, which the agent can write into, and
    # an agent's spawn proposal names the new agent's preset (a command template).
    return plain(
        f"{data['name']:<16} {data['state']:<9} {data['agent']:<10} {data['provider']:<8}"
        f" task {data['task_id'] or '-'}{kind}{detail}"
    )


# -- hal agent -------------------------------------------------------------------------
@cli.group()
def agent() -> None:
    """Long-lived named agents of the hive (woken by their mail; see docs/hive.md)."""


@agent.command()
@click.argument("name")
@click.option(
    "--agent", "preset", type=NAME, help="Agent preset or command template (default: config)."
)
@click.option("--repo", help="Repository the agent works on (default: its own new one).")
@click.option("--role", type=click.Path(path_type=Path, dir_okay=False), help="Role prompt file.")
@click.option("--provider", type=NAME, help="Sandbox provider (default: config).")
@click.option(
    "--keep-warm/--no-keep-warm",
    default=None,
    help="Keep its sandbox between turns (default: [hive] keep_warm, off).",
)
@click.option(
    "--warm-idle",
    "warm_idle",
    metavar="DURATION",
    help="Release a warm sandbox after this long with no turn: 90s, 10m, 2h "
    "(default: [hive] warm_idle_s, 10m).",
)
@json_option("Print JSON.")
def spawn(name: str, preset: str | None, repo: str | None, role: Path | None,
          provider: str | None, keep_warm: bool | None, warm_idle: str | None,
          as_json: bool) -> None:  # fmt: skip
    """Create agent NAME, asleep until its first message."""
    from hal9999.hive.store import check_name

    try:
        check_name(name)
    except HiveError as bad:  # a name typed on the command line: a usage error (status 2)
        raise UsageError(bad.message, hint=bad.hint) from None
    if keep_warm is False and warm_idle is not None:  # the idle time of a sandbox never kept
        raise UsageError(
            "--warm-idle and --no-keep-warm cannot be combined",
            hint="--warm-idle sets how long a kept sandbox waits; use it with --keep-warm",
        )
    a = app()
    repo = _repo_arg(repo)
    body = {"name": name, "agent": preset, "repo": repo, "role": _read_role(role),
            "provider": provider, "keep_warm": keep_warm,
            "warm_idle_s": None if warm_idle is None else parse_duration(warm_idle)}  # fmt: skip
    data = _call(a, "spawning an agent", "POST", "/v1/hive/agents", body)
    if as_json:
        emit_json(data)
    else:
        click.echo(f'spawned {name}; it wakes on its first message: hal msg send {name} "..."')


def _repo_arg(repo: str | None) -> str | None:
    """``--repo`` as the daemon takes it: a URL as given, a path made absolute here (the
    daemon's directory is not the caller's). An empty one is refused: it meant the current
    directory, not the default; a symlink loop was a crash report."""
    if repo is None or "://" in repo:
        return repo
    if not repo.strip():
        raise UsageError(
            "--repo must not be empty",
            hint="leave --repo out for the default, or pass a repository's path or URL",
        )
    try:
        return str(Path(repo).resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RepoError(
            f"cannot use --repo {repo}: {reason}",
            hint="pass --repo with a path to a git repository or a git URL",
        ) from exc


@agent.command("list")
@json_option("Print JSON.")
def list_(as_json: bool) -> None:
    """Every agent and its state."""
    from hal9999.hive.store import list_agents

    rows = [r.model_dump(mode="json") for r in list_agents(app().store)]
    if as_json:
        emit_json(rows)
    elif rows:
        click.echo("\n".join(_agent_line(r) for r in rows))
    else:
        click.echo("no agents yet; create one with: hal agent spawn NAME (or hal hive init)")


@agent.command()
@click.argument("name")
@json_option("Print JSON.")
def show(name: str, as_json: bool) -> None:
    """One agent: state, task, unread mail, recent turns."""
    from hal9999.hive import stats
    from hal9999.hive.broker import inbox
    from hal9999.hive.store import get_agent

    a = app()
    record = get_agent(a.store, name)
    recent = stats.turns(a.store, name, limit=5)
    data = {**record.model_dump(mode="json"), "unread": len(inbox(a.store, name)),
            "recent_turns": [t.model_dump(mode="json") for t in recent]}  # fmt: skip
    if as_json:
        emit_json(data)
        return
    click.echo(_agent_line(data))
    click.echo(f"repo {data['repo']}, branch hal/agent/{name}, unread {data['unread']}")
    if record.policy.warm:
        click.echo(f"warm: keeps its sandbox between turns (released after "
                   f"{record.policy.warm_idle_s:g}s with no turn)")  # fmt: skip
    for turn in data["recent_turns"]:
        click.echo(f"  turn {turn['id']}: {turn['result'] or 'running'} "
                   f"({turn['wake_reason']}, {_ago(turn['started_at'])})")  # fmt: skip


def _control(name: str, action: str, as_json: bool) -> None:
    from urllib.parse import quote

    from hal9999.hive.store import get_agent

    a = app()
    # Named in the store's words first: a name that is no path segment ("", "a/b", 100 KB)
    # became a request the daemon could not route ("hal: error: POST /v1/hive/agents//stop").
    get_agent(a.store, name)
    method, path = ("DELETE", "") if action == "rm" else ("POST", f"/{action}")
    data = _call(
        a, f"`hal agent {action}`", method, f"/v1/hive/agents/{quote(name, safe='')}{path}"
    )
    if as_json:
        emit_json(data)
    elif action == "rm":
        click.echo(f"removed {name} (its task, session and state directory)")
    else:
        click.echo(_agent_line(data))


@agent.command()
@click.argument("name")
@json_option("Print JSON.")
def stop(name: str, as_json: bool) -> None:
    """Stop NAME: a turn in progress is stopped, and it wakes for nothing until started."""
    _control(name, "stop", as_json)


@agent.command()
@click.argument("name")
@json_option("Print JSON.")
def start(name: str, as_json: bool) -> None:
    """Let a stopped or crashed NAME wake again (mail waiting wakes it at once)."""
    _control(name, "start", as_json)


@agent.command()
@click.argument("name")
@json_option("Print JSON.")
def rm(name: str, as_json: bool) -> None:
    """Remove NAME: its task and session, its state directory and its record."""
    _control(name, "rm", as_json)


def _task_of(name: str) -> str:
    from hal9999.hive.store import get_agent

    record = get_agent(app().store, name)
    if record.task_id is None:
        raise HalError(f"agent {name} has not run a turn yet", hint=f'hal msg send {name} "..."')
    return record.task_id


@agent.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the turn runs.")
@click.pass_context
def logs(ctx: click.Context, name: str, follow: bool) -> None:
    """The agent's output (every turn, from its session's log)."""
    from hal9999.cli.task import logs as task_logs

    ctx.invoke(task_logs, task_id=_task_of(name), follow=follow)


@agent.command()
@click.argument("name")
@click.pass_context
def attach(ctx: click.Context, name: str) -> None:
    """Attach your terminal to the agent's turn in progress (detach: Ctrl-b d)."""
    from hal9999.cli.task import attach as task_attach

    ctx.invoke(task_attach, task_id=_task_of(name))


@agent.command("stats")
@click.argument("name")
@json_option("Print JSON.")
def agent_stats(name: str, as_json: bool) -> None:
    """Turn statistics of NAME: totals, results, tokens, cost, tools, p50/p95 turn time."""
    from hal9999.cli.approvals import one_line, plain
    from hal9999.hive import stats
    from hal9999.hive.store import get_agent

    a = app()
    get_agent(a.store, name)
    data = stats.summary(a.store, name)
    if as_json:
        emit_json(data)
        return

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value / 1000:.1f}s"

    results = ", ".join(f"{n} {k}" for k, n in sorted(data["results"].items())) or "none"
    cost = "-" if data["cost_usd"] is None else f"${data['cost_usd']:.4f}"
    click.echo(f"{name}: {data['turns']} turn(s) ({results})")
    click.echo(f"  time: p50 {ms(data['p50_ms'])}, p95 {ms(data['p95_ms'])}, "
               f"total {ms(data['total_ms'])}")  # fmt: skip
    click.echo(f"  tokens: in {data['input_tokens']}, out {data['output_tokens']}, cache read "
               f"{data['cache_read_tokens']}, cache write {data['cache_write_tokens']};"
               f" cost {cost}")  # fmt: skip
    tools = ", ".join(f"{one_line(k)} {n}" for k, n in data["tools"].items()) or "none"
    # Tool names are what the agent printed (its stream-json): an agent's bytes, whose line
    # break began a line of its choosing under hal's.
    click.echo(plain(f"  tool calls: {data['tool_calls']} ({tools})"))


# -- hal msg ---------------------------------------------------------------------------
@cli.group()
def msg() -> None:
    """Messages between you (the operator) and the hive's agents."""


@msg.command()
@click.argument("name")
@click.argument("text")
@json_option("Print JSON.")
def send(name: str, text: str, as_json: bool) -> None:
    """Send TEXT to agent NAME (it wakes for it)."""
    import secrets

    from hal9999.server.client import DaemonUnavailable

    a = app()
    # One key for this send, however it reaches the store: a daemon that committed the
    # message and then dropped the connection answers the retry with that same message.
    key = secrets.token_hex(16)
    client = a.daemon()
    try:
        data = _send(a, client, name, text, key)
    except DaemonUnavailable:
        if client is None:
            raise
        data, client = _resend(a, name, text, key)
    if as_json:
        emit_json(data)
    else:
        later = "" if client is not None else " (hal serve is not running: delivered when it is)"
        click.echo(f"sent {data['id']} to {name}{later}")


RESEND_S = 10.0
"""How long ``hal msg send`` retries after a dropped connection, for a daemon that neither
answers nor goes away (one dying still accepts connections, then drops them)."""


def _resend(a: App, name: str, text: str, key: str) -> tuple[Any, DaemonClient | None]:
    """The same send again after the connection dropped (the daemon may have committed the
    message: the key makes it one): through the daemon while it runs, else straight into the
    store. Returns the message and the daemon it went through (None: the store)."""
    from hal9999.server.client import DaemonUnavailable

    deadline = time.monotonic() + RESEND_S
    while True:
        client = a.daemon()
        try:
            return _send(a, client, name, text, key), client
        except DaemonUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _send(a: App, client: DaemonClient | None, name: str, text: str, key: str) -> Any:
    """Send as the operator through the daemon, or (none running) commit to the store."""
    if client is not None:
        body = {"to": name, "body": text, "key": key}
        return run_async(client.call("POST", "/v1/hive/messages", body))
    from hal9999.hive.broker import OPERATOR
    from hal9999.hive.broker import send as broker_send

    return broker_send(a.store, sender=OPERATOR, recipient=name, body=text, key=key).model_dump()


@msg.command("inbox")
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True, help="Read messages too (the newest 100).")
@json_option("Print JSON.")
def inbox_(name: str | None, every: bool, as_json: bool) -> None:
    """Your unread messages (marked read once shown), or agent NAME's mailbox."""
    from hal9999.cli.approvals import plain
    from hal9999.hive.broker import OPERATOR, inbox, mark
    from hal9999.hive.store import get_agent

    if name is not None and not name.strip():  # `hal msg inbox "$AGENT"` with it unset
        raise UsageError(
            "the agent name must not be empty", hint="leave NAME out for your own inbox"
        )
    a = app()
    who = name or OPERATOR
    if who != OPERATOR:
        get_agent(a.store, who)
    found = inbox(a.store, who, include_read=every)
    if as_json:
        emit_json([m.model_dump() for m in found])
    else:
        if not found:
            click.echo(f"no {'' if every else 'unread '}messages for {who}")
        for m in found:
            ref = f" re {m.ref}" if m.ref else ""
            click.echo(f"{m.id} {_ago(m.created)} {m.kind} from {m.sender}{ref} [{m.state}]:")
            click.echo(plain("  " + m.body.replace("\n", "\n  ")))  # an agent's bytes
    if who == OPERATOR:
        # Read once shown, not before: a command killed (or its output lost) in between
        # shows them again next time rather than never.
        sys.stdout.flush()
        mark(a.store, [m.id for m in found if m.state != "read"], "read")


@msg.command()
@click.argument("name")
@click.argument("message_id")
@json_option("Print JSON.")
def drop(name: str, message_id: str, as_json: bool) -> None:
    """Drop MESSAGE_ID, unread, from agent NAME's mailbox: no turn of NAME gets it."""
    from urllib.parse import quote

    from hal9999.hive.store import get_agent

    a = app()
    get_agent(a.store, name)  # a name that is no path segment is named, not unroutable
    if not message_id.strip():
        raise UsageError("the message id must not be empty", hint=f"see `hal msg inbox {name}`")
    path = f"/v1/hive/agents/{quote(name, safe='')}/messages/{quote(message_id, safe='')}"
    data = _call(a, "`hal msg drop`", "DELETE", path)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"dropped {message_id} from {name}'s mailbox")


# -- hal hive --------------------------------------------------------------------------
@cli.group()
def hive() -> None:
    """The hive as a whole."""


@hive.command()
@click.option(
    "--agent", "preset", type=NAME, help="Agent preset for the manager (default: config)."
)
@click.option("--provider", type=NAME, help="Sandbox provider (default: config).")
@click.option("--repo", help="Repository the manager works on (default: its own new one).")
@json_option("Print JSON.")
def init(preset: str | None, provider: str | None, repo: str | None, as_json: bool) -> None:
    """Create the manager agent, which coordinates the hive."""
    from hal9999.hive.store import agent_exists

    a = app()
    if agent_exists(a.store, MANAGER):  # the spawn's "choose another name" cannot apply here
        raise HiveError(
            f"the hive has an agent called {MANAGER!r} already",
            hint=f'talk to it: hal msg send {MANAGER} "..."; or `hal agent rm {MANAGER}` first',
        )
    repo = _repo_arg(repo)
    body = {"name": MANAGER, "agent": preset, "provider": provider, "repo": repo,
            "role": MANAGER_ROLE, "kind": "manager"}  # fmt: skip
    data = _call(a, "`hal hive init`", "POST", "/v1/hive/agents", body)
    if as_json:
        emit_json(data)
    else:
        click.echo(f'the hive has its manager; talk to it: hal msg send {MANAGER} "..."')


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@json_option("Print JSON.")
def vacuum(dry_run: bool, as_json: bool) -> None:
    """Remove read messages, hive events, turn stats and closed threads past their
    retention ([hive]); nothing pending is ever removed."""
    from hal9999.hive.retention import vacuum as run_vacuum
    from hal9999.hivesettings import hive_settings

    a = app()
    counts = run_vacuum(a.store, hive_settings(a.config), home=a.config.home, dry_run=dry_run)
    if as_json:
        emit_json({"dry_run": dry_run, **counts})
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {counts['messages']} read message(s) ({counts['ledger_bodies']} body(ies) "
               f"from mailbox ledgers), {counts['events']} hive event(s), {counts['turns']} turn "
               f"stat(s), {counts['approvals']} resolved proposal(s), {counts['questions']} "
               f"closed question(s), {counts['reminders']} delivered reminder(s)")  # fmt: skip
