"""Launching a run: provision a sandbox, prepare the session (clone, agent files,
credentials), start the agent under its process manager."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from hal9999.agents.base import Agent, AgentContext, AgentLaunch, needs_network
from hal9999.agents.parsing import SESSION_ID
from hal9999.agents.registry import upstream_key_env
from hal9999.config import HalConfig
from hal9999.credentials import forwarded_env, install_files
from hal9999.errors import AgentNotInstalled, CredentialsError, HalError, RepoError
from hal9999.events.models import Message, SandboxAcquired
from hal9999.events.rotation import size_of
from hal9999.hostread import write_text
from hal9999.process.base import ProcessManager, arm_start
from hal9999.process.caplog import log_cap_from
from hal9999.providers.base import Provider, Sandbox
from hal9999.spec import ProcessSpec, SandboxSpec
from hal9999.store import Store
from hal9999.tasks import collect, gitrepo, indexstat, mirror
from hal9999.tasks.context import (
    ChannelFinder,
    RunContext,
    Superseded,
    borrows_objects,
    missing_key_line,
    mounts_objects,
    offline_warning,
    oom_count,
    process_spec,
    sandbox_spec,
)
from hal9999.tasks.recorder import RunRecorder
from hal9999.tasks.sandboxes import SandboxSource
from hal9999.tasks.session import HOME_TARGET, INPUT_TARGET
from hal9999.tasks.state import TaskStatus


class AgentLauncher:
    """Provisions a run's sandbox, prepares its session and starts its agent."""

    def __init__(
        self,
        config: HalConfig,
        store: Store,
        environ: Mapping[str, str],
        record: RunRecorder,
        sandboxes: SandboxSource,
    ) -> None:
        self.config = config
        self.store = store
        self.environ = environ
        self.record = record
        self.sandboxes = sandboxes
        """Where runs get sandboxes: created per run, or the daemon's warm pool."""
        self.channel_for: ChannelFinder | None = None
        """How a hive agent's run finds its MCP channel (the composition root gives it)."""

    async def launch(
        self,
        ctx: RunContext,
        provider: Provider,
        manager: ProcessManager,
        agent: Agent,
        prompt: str | None,
        started: float,
    ) -> bool:
        """Provision, prepare and start the agent; returns whether the sandbox is offline."""
        task = ctx.task
        fresh = task.base_commit is None  # its clone is made (again) by checkout()
        borrows = fresh and borrows_objects(task)
        identified: list[tuple[str | None, str]] = []

        def provisioned() -> None:
            # A hive agent's run: its own MCP socket.
            if (find := self.channel_for) is not None:
                ctx.mcp = find(self.config.home, ctx.session.run_dir, self.store, task.id)
            if borrows:  # the source's fingerprint, for its snapshot
                identified.append(mirror.identify(self.config.home, task.repo, ctx.session.root))

        # The MCP route (a marker file and a row read) and the source's fingerprint found in
        # the move's thread hop (not a hop of their own).
        await self.record.transition(ctx, TaskStatus.PROVISIONING, then=provisioned)
        spec = sandbox_spec(self.config, task, ctx.session, self.environ)
        snap: Path | None = None
        if borrows:
            # The session's link to the snapshot the clone will borrow from, made now: it is
            # the mount's source, there before the first command, and not an empty directory
            # first and a link later (an inode less a task).
            snap = await mirror.snapshot_for(
                self.config.home, task.repo, ctx.session.root, task.ref, identified[0]
            )
        elif mounts_objects(task.provider):  # the mount's source, before the first command
            await asyncio.to_thread(
                mirror.check_link, ctx.session.root, fresh=fresh, branch=task.branch
            )
        elif not fresh and mirror.linked_snapshot(ctx.session.root) is not None:
            # A checkout made in a bwrap sandbox, resumed on a provider that cannot mount
            # the snapshot it borrows from (a task with several providers).
            raise RepoError(
                f"task {task.id}'s checkout borrows objects that only a bwrap sandbox mounts; "
                f"it cannot go on in {task.provider}",
                hint=f"start a new task from its result (`hal run --ref {task.branch}`)",
            )
        # A checkout borrowing from the snapshot needs no sandbox (a bwrap sandbox binds the
        # workspace, whatever is in it): made while one is acquired, not after.
        checkout = asyncio.create_task(self.checkout(ctx, snap)) if snap is not None else None
        try:
            offline = await self._acquire(ctx, provider, agent, spec)
        except BaseException:
            if checkout is not None:
                await _dropped(checkout)
            raise
        assert ctx.sandbox is not None
        sandbox = ctx.sandbox
        early: asyncio.Task[None] | None = None
        made: ProcessSpec | None = None  # the run's spec, once made
        try:
            launch, prompt_text = self.plan(ctx, sandbox, agent, prompt)
            launch, secrets = self.exec_env(ctx, launch)
            # The agent's own key variables are secrets however they were given.
            for name in launch.secret_env:
                ctx.masker.add(secrets[name])
            pspec = process_spec(ctx.task, ctx.session, launch.command).model_copy(
                update={
                    "mask_vars": tuple(sorted({*ctx.mask_names, *launch.secret_env})),
                    "mask_files": tuple(cred.source for cred in self.config.credentials),
                    "log_cap": log_cap_from(self.environ),
                }
            )
            made = pspec
            # A manager that can start its part of the run ahead (tmux: the server, the pane
            # and the supervisor, which waits for the start) does so while the session is
            # prepared; a run ended before its start stops it.
            prestart = getattr(manager, "prestart", None)
            if prestart is not None:
                early = asyncio.create_task(prestart(sandbox, pspec, env=secrets))
            # After the prestart is on its way: its tmux and interpreter start are the run's
            # longest wait, this write a thread hop.
            await self.record.transition(ctx, TaskStatus.PREPARING, sandbox_id=sandbox.id)
            adopting = await self.prepare(ctx, sandbox, launch, prompt_text, snap, checkout)
            if early is not None:
                # Before `running`: a runner killed -9 after it leaves a supervisor waiting
                # for the start, which says the agent never started when its FIFO ends (the
                # next daemon queues the task again); killed while the pane opened, none.
                with contextlib.suppress(HalError):  # the start tries again, and says why
                    await early
            moving = asyncio.ensure_future(self.record.transition(
                ctx, TaskStatus.RUNNING, detail=f"agent {agent.name}",
                first=_armed(pspec, adopting) if early is None else adopting,
            ))  # fmt: skip
            try:
                await asyncio.shield(moving)
            except asyncio.CancelledError:
                # Its thread writes on: what the store holds once it is done decides below
                # (read before, a `running` written after left the task with no agent).
                with contextlib.suppress(BaseException):
                    await moving
                raise
        except asyncio.CancelledError:
            if made is not None and ctx.detached and self._recorded_running(ctx):
                # A daemon shutting down (SIGTERM) left this run between its `running` and
                # its start: the next daemon adopts agents that run, and would find none
                # here (the task interrupted, for a resume by hand). The agent starts now.
                await self._start_detached(ctx, manager, sandbox, made, secrets, early)
                raise
            await self._launch_failed(manager, checkout, early, made)
            raise
        except BaseException:
            await self._launch_failed(manager, checkout, early, made)
            raise
        ctx.pspec = pspec
        ctx.log_start = size_of(ctx.session.log)
        # A halt here since `running` (its stop may have come before any process it could
        # end) starts nothing; one during the start's own waits ends what the start began,
        # or a start after the halt's stop left an agent running for a cancelled task.
        if ctx.halted:
            await self._launch_failed(manager, None, early, pspec)
            raise Superseded((await asyncio.to_thread(self.store.get_task, task.id)).status)
        await manager.start(sandbox, ctx.pspec, env=secrets)
        if ctx.halted:
            await manager.stop(ctx.pspec)
        return offline

    def exec_env(self, ctx: RunContext, launch: AgentLaunch) -> tuple[AgentLaunch, dict[str, str]]:
        """``launch`` and the agent's exec-time variables, the one place they are made for
        every run (in-process, a daemon's, a hive turn's). An agent with no gateway route
        (it goes direct) is given its own key variable, from the caller's keys or this
        process's environment. With a route, no variable the agent gets holds the upstream
        key: one that does (a forwarded ``--env OPENAI_API_KEY``, however it came) holds the
        placeholder token instead, with a warning that names it, never the value."""
        given = {**ctx.secrets, **(ctx.gateway.secrets() if ctx.gateway else {})}
        missing = [name for name in launch.secret_env if name not in given]
        direct = {} if ctx.gateway else ctx.upstream_keys
        found = {n: direct[n] for n in missing if n in direct}
        missing = [name for name in missing if name not in found]
        try:
            secrets = {**forwarded_env(missing, self.environ), **found, **given}
        except CredentialsError:
            key_env = upstream_key_env(self.config, ctx.task.agent)
            if key_env is None or key_env not in missing or key_env in self.environ:
                raise
            # The agent's own API key: said as such, with where it was looked for.
            line = missing_key_line(ctx.task.agent, key_env, daemon=ctx.mcp is not None)
            raise CredentialsError(line) from None
        if ctx.gateway is None:
            return launch, secrets
        secrets, held = ctx.gateway.shield(secrets)
        command_env, in_command = ctx.gateway.shield(launch.command.env)
        held = sorted({*held, *in_command})
        if in_command:
            command = launch.command.model_copy(update={"env": command_env})
            launch = replace(launch, command=command)
        if held:
            text = (f"{', '.join(held)} held the LLM gateway's upstream key; the agent gets "
                    "its placeholder token there instead (the key stays on the host)")  # fmt: skip
            ctx.events.emit(Message(level="warning", text=text))
        return launch, secrets

    async def _launch_failed(
        self,
        manager: ProcessManager,
        checkout: asyncio.Task[str] | None,
        early: asyncio.Task[None] | None,
        pspec: ProcessSpec | None,
    ) -> None:
        """What a launch that ended before its start leaves: no checkout, no pane."""
        if checkout is not None and not checkout.done():  # ended before prepare took it
            await _dropped(checkout)
        if early is not None:
            with contextlib.suppress(BaseException):  # its client ends in a moment
                await early
            assert pspec is not None  # made before the prestart
            await manager.stop(pspec)

    def _recorded_running(self, ctx: RunContext) -> bool:
        """Whether the store holds this run's `running` (its write's hop may have ended
        after the cancel reached the run: the thread writes on). Only this launch writes it:
        the task was `preparing` or earlier when it began."""
        try:
            return self.store.get_task(ctx.task.id).status == TaskStatus.RUNNING
        except HalError:
            return False

    async def _start_detached(
        self,
        ctx: RunContext,
        manager: ProcessManager,
        sandbox: Sandbox,
        pspec: ProcessSpec,
        secrets: dict[str, str],
        early: asyncio.Task[None] | None,
    ) -> None:
        """Start the agent of a run recorded `running` that its daemon's shutdown cut off
        (see :meth:`launch`); a start that fails leaves the task as before (interrupted by
        the next daemon, resumable)."""
        if early is not None:
            with contextlib.suppress(BaseException):  # its pane, when it opened
                await early
        ctx.pspec = pspec
        try:
            await manager.start(sandbox, pspec, env=secrets)
        except (HalError, OSError):
            with contextlib.suppress(HalError, OSError):
                await manager.stop(pspec)

    async def _acquire(
        self, ctx: RunContext, provider: Provider, agent: Agent, spec: SandboxSpec
    ) -> bool:
        """The run's routes (``ctx.mcp`` found by the caller) and sandbox (``ctx.sandbox``,
        recorded by the caller with ``preparing``); returns whether the sandbox is offline."""
        task = ctx.task
        ctx.gateway = None
        if getattr(agent, "gateway_upstream", None) is not None:
            # Only an agent that names an upstream can have a route (a command template
            # names none): the gateway's modules load for its runs alone.
            from hal9999.gateway.tasks import GatewayUsage, route_for

            ctx.gateway = route_for(
                self.config, agent, task.id, self.environ, ctx.secrets,
                budget=ctx.session.run_dir, provider=task.provider, keys=ctx.upstream_keys,
            )  # fmt: skip
            if ctx.gateway is not None:
                ctx.gateway.usage = GatewayUsage(  # calls from here on
                    self.store, task.id, max_retries=self.config.gateway.max_retries
                )
                await ctx.gateway.open()
                spec = spec.model_copy(update={"binds": (*spec.binds, ctx.gateway.bind())})
        if ctx.mcp is not None:  # a hive agent's run (found by launch): its own MCP socket
            spec = spec.model_copy(update={"binds": (*spec.binds, ctx.mcp.bind())})
        offline = spec.network == "none" and needs_network(agent) and ctx.gateway is None
        if offline:
            warning = offline_warning(self.config, agent, daemon=ctx.mcp is not None)
            ctx.events.emit(Message(level="warning", text=warning))
        lease = await self.sandboxes.acquire(provider, spec, task.id)
        ctx.sandbox = sandbox = lease.sandbox if lease is not None else await provider.create(spec)
        ctx.oom_before = oom_count(sandbox)  # a warm sandbox's cgroup counts from before
        warm = lease is not None and lease.warm
        acquired = SandboxAcquired(sandbox_id=sandbox.id, provider=sandbox.provider, warm=warm)
        ctx.events.emit(acquired)
        if ctx.gateway is not None:
            await ctx.gateway.connect(sandbox)
        if ctx.mcp is not None:
            await ctx.mcp.connect(sandbox)

        # The sandbox is recorded with the next status (`launch`), one write (each
        # is a thread hop and a commit). Until then a crash or a stop finds it as before the
        # record: the run's own release (which knows it), the `hal.task` label of a sandbox
        # made for the task, or recovery's sweep of every sandbox no live run keeps (a
        # pooled one).
        return offline

    async def checkout(self, ctx: RunContext, snap: Path | None) -> str:
        """Clone the task's source into its (agent-free) workspace, borrowing from
        ``snap``, the snapshot :meth:`launch` linked, if any; returns the base commit. It
        changes nothing of ``ctx``: :meth:`launch` runs it while the run's own steps go on."""
        task, session = ctx.task, ctx.session
        # No clone finished, so no agent ever ran here: a clone cut short (timeout,
        # SIGTERM, kill -9) left only its own files, which would block cloning again.
        if _has_entries(session.workspace):  # a fresh task's is empty: no thread hop
            await asyncio.to_thread(_empty, session.workspace)
        source = gitrepo.RepoSource(task.repo_kind, task.repo)
        auth = None
        if source.kind == "url":  # a forge's token, for a private repository
            from hal9999.forges.gitauth import git_auth_env

            auth = git_auth_env(task.repo, self.config, {**self.environ, **ctx.forge_tokens})
        base = await gitrepo.clone(
            source, task.ref, session.workspace, task.branch, borrow=snap,
            alternates=mirror.ALTERNATES, auth_env=auth,
        )  # fmt: skip
        if snap is not None and not mirror.alternates_pointed(session.workspace):
            await asyncio.to_thread(mirror.point_alternates, session.workspace)
        return base

    def plan(
        self, ctx: RunContext, sandbox: Sandbox, agent: Agent, prompt: str | None
    ) -> tuple[AgentLaunch, str]:
        """What the agent's run will be (its command, environment and files) and the text
        of its prompt file, before :meth:`prepare` makes the session ready for it; no I/O
        but a warning event when the recorded agent session cannot be resumed."""
        task = ctx.task
        prompt_text = text = prompt or task.prompt
        resume = task.agent_session_id if task.resumes and agent.supports_resume else None
        if resume is not None and not SESSION_ID.fullmatch(resume):
            # The id is the agent's own output and goes on its command line: one recorded
            # by a hal before the parser's check, or by a plugin's parser, is never resumed.
            ctx.events.emit(Message(level="warning", text=_UNRESUMABLE))
            resume = None
        if task.resumes and resume is None and prompt is None:
            text = task.prompt
        actx = AgentContext(
            task_id=task.id,
            prompt=text,
            prompt_file=sandbox.path(INPUT_TARGET) + "/prompt.txt",
            workspace=sandbox.workdir,
            home=sandbox.path(HOME_TARGET),
            resume_session=resume,
            settings=self.config.agent_settings(task.agent),
        )
        if ctx.gateway is not None:
            actx = replace(actx, settings=ctx.gateway.agent_settings(actx.settings))
        if ctx.mcp is not None:
            actx = replace(actx, mcp=ctx.mcp.server())
        launch = agent.build(actx)
        # Whether the agent's program is installed is checked by the launcher itself, in the
        # agent's own sandbox start (no sandbox start of its own); see
        # :func:`missing_program`.
        no_network = sandbox.spec.network == "none"
        gateway_env = ctx.gateway.launcher_env(egress=no_network) if ctx.gateway else {}
        if "HAL_GATEWAY_DIR" in gateway_env:  # a pod sees the channel in its mirror
            gateway_env["HAL_GATEWAY_DIR"] = sandbox.path(gateway_env["HAL_GATEWAY_DIR"])
        env = {**launch.env, **launch.command.env, **gateway_env}
        command = launch.command.model_copy(update={"env": env})
        planned = AgentLaunch(
            command=command, env=launch.env, files=launch.files, secret_env=launch.secret_env
        )
        return planned, prompt_text

    async def prepare(
        self,
        ctx: RunContext,
        sandbox: Sandbox,
        launch: AgentLaunch,
        prompt_text: str,
        snap: Path | None = None,
        checkout: asyncio.Task[str] | None = None,
    ) -> Callable[[], None] | None:
        """Repo, prompt, agent files and credentials into the session and the sandbox, for
        the run :meth:`plan` made; a fresh clone borrows from ``snap``, the snapshot
        :meth:`launch` linked, if any (``checkout``: that clone, started already). Returns
        the handing of the checkout and home to the sandbox's user when it is left to the
        caller's ``running`` move (in that move's thread hop, before it is written: issue
        16), which it is when nothing here comes after it."""
        task, session = ctx.task, ctx.session
        cloned = task.base_commit is None
        if not cloned:
            await collect.verify_checkout(sandbox, task.id, session.workspace)
        if task.base_commit is None:
            base = await (checkout if checkout is not None else self.checkout(ctx, snap))
            # Recorded with `running` (a write fewer): should the run end before, no agent
            # has run here, and a later run clones again as it would after a clone cut short.
            ctx.unsaved["base_commit"] = base
            ctx.task = task = task.model_copy(update={"base_commit": base})
        # The checkout (made by host git) and the home are the agent's to change; a warm
        # sandbox from the pool meets this session's directories only now.
        targets = (sandbox.workdir, sandbox.path(HOME_TARGET))
        # Inside, as the agent's own user, once the checkout is theirs; only when the fresh
        # clone (host git's, no agent has run) names any `.gitmodules`: without one the
        # sandboxed step would only exit 0, at the cost of a sandbox start.
        submodules = cloned and os.path.lexists(session.workspace / ".gitmodules")
        # A host sandbox's, as one blocking step: left to the move's hop when nothing below
        # writes into the trees it hands over, else in a hop of its own now.
        adoption = getattr(sandbox, "adoption", None)
        adopting: Callable[[], None] | None = adoption(targets) if adoption else None
        uid = getattr(sandbox, "uid", None)
        if cloned and adopting is not None and isinstance(uid, int):
            # The handover makes the fresh index untrue (see indexstat): made true again.
            adopting = indexstat.refreshed(adopting, session.workspace, uid)
        if adoption is None:
            for target in targets:
                await sandbox.adopt(target)
        elif adopting is not None and (submodules or launch.files or self.config.credentials):
            await asyncio.to_thread(adopting)
            adopting = None
        if submodules:
            warning = await gitrepo.init_submodules(sandbox)
            if warning is not None:
                ctx.events.emit(Message(level="warning", text=warning))
        write_text(session.prompt_file, prompt_text)  # no file object
        for path, data in launch.files.items():
            await sandbox.write_file_atomic(path, data, mode=0o600)
        await install_files(sandbox, self.config.credentials, sandbox.path(HOME_TARGET))
        return adopting


def _armed(pspec: ProcessSpec, adopting: Callable[[], None] | None) -> Callable[[], None]:
    """What the ``running`` move of a run that nothing started ahead (direct, PM2) makes
    first, in its thread hop: the marker its supervisor takes at its start (a runner killed
    -9 before then leaves it for the next daemon, which queues the task again; see
    :func:`arm_start`), then the prepared files' adoption, if any."""

    def first() -> None:
        arm_start(pspec.exit_path)
        if adopting is not None:
            adopting()

    return first


_UNRESUMABLE = (
    "the agent session recorded for this task is not a plain id (its own output, which would "
    "reach the agent's command line); the agent starts a new session with the task's prompt"
)

MISSING_STATUS = 127
"""The launcher's exit status when the agent's program is not installed."""
_TAIL_BYTES = 4096


def missing_program(
    agent: Agent, provider: str, exit_code: int | None, log: Path, log_start: int | None
) -> AgentNotInstalled | None:
    """The error for a run whose launcher found no agent program: it exits with
    :data:`MISSING_STATUS` after printing its one line (``LAUNCH_SCRIPT``) as the last output
    of the run. An agent that prints the same line and exits 127 only relabels its own
    failure."""
    if exit_code != MISSING_STATUS:
        return None
    program = agent.program
    said = f"hal: agent program {program} is not installed in the sandbox"
    try:
        with log.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(log_start or 0, size - _TAIL_BYTES)
            file.seek(start)
            tail = file.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    if not lines or lines[-1] != said:
        return None
    return AgentNotInstalled(
        f"agent program {program!r} is not installed in the {provider} sandbox",
        hint=agent.install_hint,
    )


async def _dropped(task: asyncio.Task[str]) -> None:
    """Cancel ``task`` and wait for its end (a git it runs is killed, :func:`gitrepo.git`);
    whatever it raised is not the caller's error."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: its failure is not reported as never seen


def _has_entries(directory: Path) -> bool:
    """Whether ``directory`` holds anything (one ``getdents``; False when it is missing or no
    directory: :func:`_empty` has nothing to do then either)."""
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except (FileNotFoundError, NotADirectoryError):
        return False


def _empty(directory: Path) -> None:
    """Remove what is inside ``directory`` (not the directory: it may be a mount target)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
