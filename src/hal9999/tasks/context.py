"""What one run of a task is made of: its context, usage totals, and the specs of its
process and sandbox (shared by the runner, the service, recovery and the CLI)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hal9999.agents.parsing import add_counts
from hal9999.agents.registry import is_template
from hal9999.config import HalConfig
from hal9999.errors import AgentFailed
from hal9999.events.log import EventLog
from hal9999.events.models import Event, Usage
from hal9999.pool.settings import network_of, provider_settings, resources_of
from hal9999.providers.base import Sandbox
from hal9999.redact import SecretMasker
from hal9999.spec import ArgvCommand, Bind, ProcessSpec, SandboxSpec, ShellCommand
from hal9999.store import TaskRecord
from hal9999.tasks.mirror import OBJECTS_LINK, OBJECTS_TARGET
from hal9999.tasks.session import Session
from hal9999.tasks.state import TaskStatus

if TYPE_CHECKING:  # a run loads them only when it has a gateway route or an MCP route
    from hal9999.agents.base import Agent, McpServer
    from hal9999.gateway.tasks import GatewayRoute
    from hal9999.providers.base import Sandbox
    from hal9999.store import Store
    from hal9999.tasks.retry import Retry, RetryPolicy


class AgentChannel(Protocol):
    """A hive agent's way to its MCP server from inside its sandbox (the hive's
    ``McpRoute``): a run binds it, connects it once the sandbox exists, and hands the agent
    CLI its server."""

    def bind(self) -> Bind:
        """What the sandbox mounts for it."""
        ...

    async def connect(self, sandbox: Sandbox) -> None:
        """Reach it from ``sandbox``."""
        ...

    def server(self) -> McpServer:
        """The stdio server the agent CLI starts."""
        ...


ChannelFinder = Callable[["Path", "Path", "Store | None", "str | None"], "AgentChannel | None"]
"""``(home, run_dir, store, task_id)``: the channel of a hive agent's run, None for any
other run (the hive's ``route_for``, given by the composition root)."""

TAKEN_AWAY = frozenset({TaskStatus.STOPPED, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED})
"""States another process puts a task in while a runner holds it (stop, cancel, the reaper)."""


def taken_from_us(task: TaskRecord) -> bool:
    """Whether ``task`` is no longer this process's run: moved to a state another process puts
    it in (stop, cancel, the reaper), or held by another process since (a resume)."""
    return task.status in TAKEN_AWAY or task.runner_pid not in (None, os.getpid())


class Superseded(Exception):
    """Another hal process moved the task to a resting state; this run must leave it alone."""


class Vanished(Exception):
    """The agent's run ended without an exit status (its supervisor was killed): the run
    fails (``agent_failed``), and its work is collected all the same, as after a timeout."""


class Totals:
    """Token and cost figures gathered from usage events.

    This module's classes are plain classes, not dataclasses: the methods a dataclass
    generates are compiled per class, at the import of every in-process ``hal run``."""

    __slots__ = ("agent_cost_usd", "cost_usd", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd: float | None = None
        self.agent_cost_usd: float | None = None
        """The cost the agent reported itself, where the gateway measures the run: the
        run's cost when the gateway had no price for its model (rather than none)."""

    def add_reported(self, usage: Usage) -> None:
        """Fold in the cost of one usage event the agent reported of a run the gateway
        measures (its tokens are the gateway's to count)."""
        if usage.total:
            self.agent_cost_usd = usage.cost_usd
        elif usage.cost_usd is not None:
            self.agent_cost_usd = (self.agent_cost_usd or 0.0) + usage.cost_usd

    @property
    def known_cost(self) -> float | None:
        """The run's cost: measured, else as the agent reported it, else None."""
        return self.cost_usd if self.cost_usd is not None else self.agent_cost_usd

    def add(self, usage: Usage) -> None:
        """Fold one usage event in; a run total replaces the running sum."""
        if usage.total:
            self.input_tokens, self.output_tokens = usage.input_tokens, usage.output_tokens
            self.cost_usd = usage.cost_usd
            return
        self.input_tokens = add_counts(
            self.input_tokens, usage.input_tokens, usage.cache_read_tokens
        )
        self.output_tokens = add_counts(self.output_tokens, usage.output_tokens)
        if usage.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + usage.cost_usd


class RunContext:
    """Everything one run needs, resolved before it starts."""

    task: TaskRecord
    session: Session
    events: EventLog
    masker: SecretMasker
    secrets: dict[str, str]
    """The agent's exec-time variables as given (``--env``, ``--secret``, forwarded)."""
    upstream_keys: dict[str, str]
    """The caller's API keys for the gateway, by variable name (a daemon's client sends
    them): read by the gateway's route, never part of the agent's environment (an agent
    with no route, going direct, takes its own key variable from here)."""
    forge_tokens: dict[str, str]
    """The caller's forge tokens by variable name (:attr:`RunRequest.forge_tokens`): host
    git's only (the clone), never the sandbox's."""
    on_output: Callable[[str], None] | None
    """Called with each chunk of (masked) output as it is read."""
    on_event: Callable[[Event], None] | None
    """Called with each event the agent's output yields (parsed events and output chunks)."""
    mask_names: tuple[str, ...]
    """Exec-time variables whose values are secrets (the supervisor masks them)."""
    checks_patch: bool
    """The task has variables that may hold secrets: collection marks the patch it scanned
    clean (``run/patch-checked``, see :meth:`TaskService.shown_patch`); a task without any
    never needs the mark, or the inode."""
    unknown: tuple[str, ...]
    """Variables of the task that may hold secrets and whose values this process lacks (an
    adopted run: its agent got them, hal keeps none): the scan cannot clear the patch of
    them, so it is never marked checked (a reader elsewhere is refused it unless masked)."""
    collecting: bool
    """A collection's script runs (or was cut short: it did not end by itself), so its git
    may have left its locks in the checkout: whoever ends the run drops them once the
    sandbox is gone (:func:`~hal9999.tasks.collect.drop_cut_locks`)."""
    log_start: int | None
    """Size of the log when this run's agent started (where its output begins)."""
    totals: Totals
    detached: bool
    """Set when a daemon shuts down: leave the agent and its sandbox for the next to adopt."""
    halted: bool
    """Set when this process stops or cancels the task while its run is here: a run between
    its ``running`` and its agent's start then starts nothing (the halt's own stop may have
    found no process yet to end)."""
    adopted: Adopted | None
    """Set when carrying on a run whose agent outlived its runner."""
    retry: RetryPolicy | None
    """The daemon's retry policy: a failure it retries is written as ``queued`` again by
    the run's end, in the one write that would have said ``failed`` (:mod:`.retry`). None
    for an in-process run, whose caller requeues a failure itself."""
    retried: Retry | None
    """The retry the run's end queued the task for: the task is then this process's
    again (its ``runner_pid``), not let go of by the run."""
    sandbox: Sandbox | None
    """The run's sandbox, once acquired."""
    pspec: ProcessSpec | None
    """The agent's process spec, once known."""
    gateway: GatewayRoute | None
    """The run's way to its LLM through the host's gateway (None: the agent goes direct)."""
    mcp: AgentChannel | None
    """The run's way to its hive agent's MCP server (None: not a hive agent's task)."""
    session_id: str | None
    """An agent session id seen in the output and not yet written to the task's record."""
    unsaved: dict[str, Any]
    """Fields of the task's record the run has learnt (a fresh clone's ``base_commit``, the
    collection's ``files_changed``), written with its next status instead of alone (issue
    16: each write is a thread hop and a commit on the task's way); a run that ends without
    one (taken away by another process) writes them at its end."""
    oom_before: int | None
    """The sandbox's count of processes its memory limit killed when the agent was started
    (None: unknown, a provider that does not count them or an adopted run)."""
    owed: list[Callable[[], object]]
    """Blocking host writes the run owes before its next status write, made first in that
    write's thread hop (the record of the branch the bring-back moved: with the final
    status); a run that ends without one writes them at its end."""

    def __init__(
        self,
        task: TaskRecord,
        session: Session,
        events: EventLog,
        masker: SecretMasker,
        secrets: dict[str, str],
        on_output: Callable[[str], None] | None = None,
        upstream_keys: dict[str, str] | None = None,
        forge_tokens: dict[str, str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        mask_names: tuple[str, ...] = (),
        checks_patch: bool = False,
        unknown: tuple[str, ...] = (),
        log_start: int | None = None,
        totals: Totals | None = None,
        detached: bool = False,
        adopted: Adopted | None = None,
        retry: RetryPolicy | None = None,
        retried: Retry | None = None,
        sandbox: Sandbox | None = None,
        pspec: ProcessSpec | None = None,
        gateway: GatewayRoute | None = None,
        mcp: AgentChannel | None = None,
        session_id: str | None = None,
        unsaved: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.session = session
        self.events = events
        self.masker = masker
        self.secrets = secrets
        self.upstream_keys = {} if upstream_keys is None else upstream_keys
        self.forge_tokens = {} if forge_tokens is None else forge_tokens
        self.on_output = on_output
        self.on_event = on_event
        self.mask_names = mask_names
        self.checks_patch = checks_patch
        self.unknown = unknown
        self.collecting = False
        self.log_start = log_start
        self.totals = Totals() if totals is None else totals
        self.detached = detached
        self.halted = False
        self.adopted = adopted
        self.retry = retry
        self.retried = retried
        self.sandbox = sandbox
        self.pspec = pspec
        self.gateway = gateway
        self.mcp = mcp
        self.session_id = session_id
        self.unsaved = {} if unsaved is None else unsaved
        self.oom_before = None
        self.owed = []


class Adopted:
    """Where an adopted run picks up: its sandbox, process and how far its log was read."""

    sandbox: Sandbox
    pspec: ProcessSpec
    offset: int
    """Log bytes already turned into events."""
    parsed_offset: int
    """Bytes of the run's parsed-events file already emitted."""
    started: float
    """``time.monotonic()`` value equivalent to when the agent started (for the timeout)."""
    totals: Totals
    """Usage the run's events already record."""

    def __init__(
        self,
        sandbox: Sandbox,
        pspec: ProcessSpec,
        offset: int,
        parsed_offset: int,
        started: float,
        totals: Totals | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.pspec = pspec
        self.offset = offset
        self.parsed_offset = parsed_offset
        self.started = started
        self.totals = Totals() if totals is None else totals


def process_spec(
    task: TaskRecord, session: Session, command: ArgvCommand | ShellCommand
) -> ProcessSpec:
    """The process spec of a task's current run."""
    return ProcessSpec(
        name=f"hal-{task.id}",
        command=command,
        log_path=session.log,
        exit_path=session.exit_file(task.resumes),
        # A command template's parser (plain text) yields no events: without --parser the
        # supervisor imports none of the agents' code and models (its start-up
        # is on every task's path).
        parser=None if is_template(task.agent) else task.agent,
        events_path=parsed_events_path(session, task.resumes),
    )


def parsed_events_path(session: Session, attempt: int) -> Path:
    """Where the supervisor of run ``attempt`` writes the events parsed from raw output."""
    return session.run_dir / f"parsed-{attempt}.jsonl"


def sandbox_spec(
    config: HalConfig,
    task: TaskRecord,
    session: Session,
    environ: Mapping[str, str] | None = None,
) -> SandboxSpec:
    """The sandbox a task runs in (with its provider's network and limits, when set)."""
    settings = provider_settings(config, environ or {}, task.provider)
    binds = session.binds()
    if mounts_objects(task.provider):
        binds += (Bind(source=session.root / OBJECTS_LINK, target=OBJECTS_TARGET),)
    return SandboxSpec(
        provider=task.provider,
        resources=resources_of(config, settings),
        network=network_of(config, settings),
        workspace=session.workspace,
        binds=binds,
        labels={"hal.task": task.id},
    )


def mounts_objects(provider: str) -> bool:
    """Whether the provider's sandboxes mount the session's link to a snapshot of the
    source (:mod:`hal9999.tasks.mirror`; an empty directory when the checkout borrows
    nothing): bwrap's, every task's alike, so that one warm sandbox serves them all."""
    return provider == "bwrap"


def borrows_objects(task: TaskRecord) -> bool:
    """Whether the task's checkout borrows its objects from a read-only snapshot of the
    source: a local repository in a sandbox that mounts the snapshot."""
    return mounts_objects(task.provider) and task.repo_kind == "local"


def oom_count(sandbox: Sandbox | None) -> int | None:
    """How many processes ``sandbox``'s memory limit has killed, for a provider that counts
    them (a cgroup's ``oom_kill``); None otherwise."""
    count = getattr(sandbox, "oom_kills", None)
    if count is None or getattr(getattr(sandbox, "limits", None), "memory_mb", None) is None:
        return None
    try:
        return int(count())
    except OSError:
        return None


def memory_killed(ctx: RunContext, agent: str) -> AgentFailed | None:
    """The error of an agent that ended because its sandbox's memory limit killed one of
    its processes (a bare status 137 says neither why nor what to raise); None when the
    limit killed nothing during the run."""
    after = oom_count(ctx.sandbox)
    if ctx.oom_before is None or after is None or after <= ctx.oom_before:
        return None
    limit = getattr(getattr(ctx.sandbox, "limits", None), "memory_mb", None)
    return AgentFailed(
        f"agent {agent} was killed by the sandbox's memory limit ({limit} MiB)",
        hint="raise memory_mb in [resources] of the config, or HAL_MEMORY_MB; "
        f"see `hal task logs {ctx.task.id}`",
    )


def offline_warning(config: HalConfig, agent: Agent, *, daemon: bool = False) -> str:
    """Why an API-calling agent in a sandbox without network is likely to fail, and the fix:
    where the LLM gateway would carry its calls, the key the gateway lacks (a sandbox with
    network would only hand the agent a key it does not have either); else the network.
    ``daemon``: the key was looked for in ``hal serve``'s own environment (a hive turn's),
    not in the shell of whoever started the run."""
    settings = config.agent_settings(agent.name)
    choose = getattr(agent, "gateway_upstream", None)
    chosen = choose(settings) if choose is not None and config.gateway.enabled else None
    if chosen is not None:
        return missing_key_line(agent.name, chosen[1], daemon=daemon)
    return (
        f"agent {agent.name} calls an LLM API but the sandbox has no network (network = "
        '"none"): set network = "host" in hal.toml or HAL_NETWORK=host'
    )


def missing_key_line(agent: str, key_env: str, *, daemon: bool = False) -> str:
    """That ``agent`` has no API key in ``key_env``, where it was looked for, and the fix."""
    login = " or `hal auth claude login`" if agent == "claude" else ""
    if not daemon:
        return (
            f"agent {agent} has no API key: {key_env} is not set here (hal's LLM gateway "
            f"calls the API from the host, so the sandbox needs no network): "
            f"{missing_key_fix(agent, key_env)}"
        )
    return (
        f"agent {agent} has no API key: {key_env} is not set in hal serve's environment "
        f"(a hive agent's calls take the key hal serve was started with; hal's LLM gateway "
        f"keeps it on the host): restart hal serve with {key_env}=... exported{login}"
    )


def missing_key_fix(agent: str, key_env: str) -> str:
    """How to give ``agent`` its API key in this shell."""
    login = " or `hal auth claude login`" if agent == "claude" else ""
    return f"export {key_env}=...{login}"
