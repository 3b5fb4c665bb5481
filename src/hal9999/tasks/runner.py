"""One run of a task: sandbox, prepare, agent, stream, collect (:mod:`.finish`), release.

The runner owns a task only while it runs. Another ``hal`` process may stop or cancel the task
meanwhile (it kills the process and the sandbox and records the new state); the runner notices
the record changed under it and leaves without touching it again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hal9999.agents.base import Agent, AgentContext, AgentLaunch, needs_network
from hal9999.agents.registry import resolve_agent
from hal9999.config import HalConfig
from hal9999.credentials import forwarded_env, install_files, remove_files
from hal9999.errors import (
    AgentFailed,
    AgentNotInstalled,
    DiskLimitExceeded,
    HalError,
    TaskNotFound,
    TaskStateError,
    TaskTimeout,
)
from hal9999.events.models import (
    AgentSession,
    Event,
    Message,
    SandboxAcquired,
    TaskEnd,
    Usage,
)
from hal9999.gateway.tasks import GatewayRoute, GatewayUsage, restore_route, route_for
from hal9999.hive.mcp.channel import route_for as mcp_route_for
from hal9999.process.base import ProcessManager, read_exit_status
from hal9999.process.caplog import log_cap_from
from hal9999.providers import limits
from hal9999.providers.base import Provider, Sandbox
from hal9999.spec import ArgvCommand, ProcessSpec
from hal9999.store import Store, TaskRecord
from hal9999.tasks import finish, gitrepo
from hal9999.tasks.context import (
    TAKEN_AWAY,
    RunContext,
    Superseded,
    offline_warning,
    process_spec,
    sandbox_spec,
)
from hal9999.tasks.output import OUTPUT_EVENTS_CAP, OutputFollower, file_size
from hal9999.tasks.plugins import load_process_manager, load_provider_for
from hal9999.tasks.sandboxes import DirectSource, SandboxSource
from hal9999.tasks.session import HOME_TARGET, INPUT_TARGET
from hal9999.tasks.state import TaskStatus, transition

_POLL_S = 0.05
_FIRST_POLL_S = 0.005
_LIVENESS_S = 1.0
_DEFAULT_RESUME_PROMPT = "Continue where you left off and finish the task."


class TaskRunner:
    """Runs tasks from the store to a final or resting state."""

    def __init__(self, config: HalConfig, store: Store, environ: Mapping[str, str]) -> None:
        self.config = config
        self.store = store
        self.environ = environ
        self.sandboxes: SandboxSource = DirectSource()
        """Where runs get sandboxes: created per run, or the daemon's warm pool."""

    # -- state -------------------------------------------------------------------------
    async def transition(
        self, ctx: RunContext, target: TaskStatus, detail: str | None = None, **fields: Any
    ) -> TaskRecord:
        """Move the task on from the state this run put it in (compare-and-set); raises
        :class:`Superseded` when another process took the task meanwhile. The database work
        runs in a thread: a write lock held elsewhere must not stall the event loop."""
        return await asyncio.to_thread(self._transition, ctx, target, detail, **fields)

    def _transition(
        self, ctx: RunContext, target: TaskStatus, detail: str | None, **fields: Any
    ) -> TaskRecord:
        if target is TaskStatus.RUNNING:
            fields.setdefault("started_at", time.time())
        try:
            _, ctx.task = transition(
                self.store,
                ctx.events,
                ctx.task.id,
                target,
                expect=ctx.task.status,
                detail=detail,
                **fields,
            )
        except TaskStateError:
            current = self.store.get_task(ctx.task.id)
            if current.status in TAKEN_AWAY:
                raise Superseded(current.status) from None
            raise
        return ctx.task

    async def update(self, task_id: str, **fields: Any) -> TaskRecord:
        """Write ``fields`` to the task's record in a thread: a write lock held elsewhere
        must not stall the event loop (the daemon's API and every other run share it)."""
        return await asyncio.to_thread(self.store.update_task, task_id, **fields)

    def emit(self, ctx: RunContext, event: Event) -> None:
        """Record an event, folding usage and session ids into the task (the gateway's exact
        figures, when the agent goes through it, instead of what the agent says). A session
        id is only noted here (emit is synchronous, called from the output pumps); the
        awaited :meth:`save_session` right after the pump writes it."""
        if isinstance(event, Usage):
            if ctx.gateway is None or event.source == "gateway":
                ctx.totals.add(event)
        elif isinstance(event, AgentSession):
            ctx.session_id = event.session_id
        ctx.events.emit(event)

    async def save_session(self, ctx: RunContext) -> None:
        """Write the agent session id :meth:`emit` noted, if any, to the task's record."""
        if ctx.session_id is not None:
            await self.update(ctx.task.id, agent_session_id=ctx.session_id)
            ctx.session_id = None

    # -- the run -----------------------------------------------------------------------
    async def run(self, ctx: RunContext, prompt: str | None = None) -> TaskRecord:
        """Run the task once (or carry on an adopted run); returns the record in its final or
        resting state."""
        task = ctx.task
        await self.update(task.id, runner_pid=os.getpid())
        agent = resolve_agent(task.agent, self.config.agent_settings(task.agent))
        provider = load_provider_for(self.config, task.provider)
        manager = load_process_manager(self.config, task.process_manager)
        started = time.monotonic()
        exit_code: int | None = None
        offline = False
        if ctx.adopted is not None:
            started = ctx.adopted.started
        # The timeout bounds the whole run (sandbox, clone, agent, collection), not only the
        # agent: a clone stuck on a silent server must end too.
        deadline = asyncio.timeout_at(_loop_deadline(task.timeout_s, started))
        try:
            try:
                async with deadline:
                    if ctx.adopted is None:
                        offline = await self.launch(ctx, provider, manager, agent, prompt, started)
                        assert ctx.pspec is not None
                        exit_code = await self.follow(ctx, manager, ctx.pspec, agent, started)
                    else:
                        ctx.totals = ctx.adopted.totals
                        ctx.sandbox, ctx.pspec = ctx.adopted.sandbox, ctx.adopted.pspec
                        ctx.gateway = await self.readopt_gateway(ctx, agent)
                        exit_code = await self.follow(
                            ctx,
                            manager,
                            ctx.pspec,
                            agent,
                            started,
                            offset=ctx.adopted.offset,
                            parsed_offset=ctx.adopted.parsed_offset,
                        )
                    assert ctx.sandbox is not None
                    await self.transition(ctx, TaskStatus.COLLECTING)
                    files = await finish.collect_result(ctx, ctx.sandbox, self.update)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise
                status = self.store.get_task(task.id).status
                raise finish.timed_out(task.timeout_s, status) from exc
            refused = ctx.gateway.refusal(self.store) if ctx.gateway is not None else None
            if refused is not None:  # the agent's work is collected above: nothing is lost
                return await self.finish(
                    ctx, TaskStatus.FAILED, started, exit_code, error=refused, files=files
                )
            if exit_code == 0:
                return await self.finish(ctx, TaskStatus.SUCCEEDED, started, exit_code, files=files)
            hint = f"see `hal task logs {task.id}`"
            if offline:
                hint += f"; {offline_warning(agent.name)}"
            error = AgentFailed(f"agent {agent.name} exited with status {exit_code}", hint=hint)
            return await self.finish(
                ctx, TaskStatus.FAILED, started, exit_code, error=error, files=files
            )
        except Superseded:
            return self.store.get_task(task.id)
        except (TaskTimeout, DiskLimitExceeded) as exc:
            if ctx.pspec is not None:
                await manager.stop(ctx.pspec)
            files = await finish.collect_leftovers(ctx, self.update)
            ended = TaskStatus.TIMED_OUT if isinstance(exc, TaskTimeout) else TaskStatus.FAILED
            return await self.finish(ctx, ended, started, exit_code, error=exc, files=files)
        except HalError as exc:
            if ctx.pspec is not None:
                await manager.stop(ctx.pspec)
            return await self.finish(ctx, TaskStatus.FAILED, started, exit_code, error=exc)
        except asyncio.CancelledError as cancelled:
            if ctx.detached:
                raise  # the daemon is shutting down; the agent runs on, to be adopted
            # Ctrl-C: stop the agent and keep the session; the sandbox goes in `finally`.
            if ctx.pspec is not None:
                await manager.stop(ctx.pspec)
            reason = finish.cancel_reason(cancelled)
            await self.finish(ctx, TaskStatus.CANCELLED, started, exit_code, note=reason)
            raise
        finally:
            if not ctx.detached:
                await self.remove_credentials(ctx)
                if ctx.gateway is not None:
                    await ctx.gateway.close()
            if ctx.sandbox is not None and not ctx.detached:
                # A task stopped or cancelled from outside: whoever did it destroys the
                # sandbox too, so it must not go back to the pool for the next task.
                try:
                    taken = self.store.get_task(task.id).status in TAKEN_AWAY
                except TaskNotFound:  # removed with --force while running
                    taken = True
                await self.release(provider, ctx.sandbox, reuse=not taken)
                await self.update(task.id, sandbox_id=None)
            await self.save_session(ctx)  # a run cut short between a pump and its save
            await self.update(task.id, runner_pid=None)

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
        await self.transition(ctx, TaskStatus.PROVISIONING)
        spec = sandbox_spec(self.config, task, ctx.session, self.environ)
        ctx.gateway = route_for(
            self.config, agent, task.id, self.environ, ctx.secrets,
            budget=ctx.session.run_dir, provider=task.provider,
        )  # fmt: skip
        if ctx.gateway is not None:
            ctx.gateway.usage = GatewayUsage(self.store, task.id)  # calls from here on
            await ctx.gateway.open()
            spec = spec.model_copy(update={"binds": (*spec.binds, ctx.gateway.bind())})
        ctx.mcp = await asyncio.to_thread(
            mcp_route_for, self.config.home, ctx.session.run_dir, self.store, task.id
        )
        if ctx.mcp is not None:  # a hive agent's run: its own MCP socket, and no other
            spec = spec.model_copy(update={"binds": (*spec.binds, ctx.mcp.bind())})
        offline = spec.network == "none" and needs_network(agent) and ctx.gateway is None
        if offline:
            self.emit(ctx, Message(level="warning", text=offline_warning(agent.name)))
        lease = await self.sandboxes.acquire(provider, spec, task.id)
        ctx.sandbox = sandbox = lease.sandbox if lease is not None else await provider.create(spec)
        warm = lease is not None and lease.warm
        await self.update(task.id, sandbox_id=sandbox.id)
        self.emit(ctx, SandboxAcquired(sandbox_id=sandbox.id, provider=sandbox.provider, warm=warm))
        if ctx.gateway is not None:
            await ctx.gateway.connect(sandbox)
        if ctx.mcp is not None:
            await ctx.mcp.connect(sandbox)

        await self.transition(ctx, TaskStatus.PREPARING)
        launch = await self.prepare(ctx, sandbox, agent, prompt)
        await self.transition(ctx, TaskStatus.RUNNING, detail=f"agent {agent.name}")
        given = {**ctx.secrets, **(ctx.gateway.secrets() if ctx.gateway else {})}
        missing = [name for name in launch.secret_env if name not in given]
        secrets = {**forwarded_env(missing, self.environ), **given}
        # The agent's own key variables are secrets however they were given.
        for name in launch.secret_env:
            ctx.masker.add(secrets[name])
        ctx.pspec = process_spec(ctx.task, ctx.session, launch.command).model_copy(
            update={
                "mask_vars": tuple(sorted({*ctx.mask_names, *launch.secret_env})),
                "mask_files": tuple(cred.source for cred in self.config.credentials),
                "log_cap": log_cap_from(self.environ),
            }
        )
        ctx.log_start = file_size(ctx.session.log)
        await manager.start(sandbox, ctx.pspec, env=secrets)
        return offline

    async def readopt_gateway(self, ctx: RunContext, agent: Agent) -> GatewayRoute | None:
        """The adopted run's gateway route: its token registered again (the gateway may have
        restarted too), its calls' usage events going on from the last one emitted."""
        route = restore_route(
            self.config, agent, ctx.task.id, self.environ, ctx.secrets,
            run_dir=ctx.session.run_dir, store=self.store, provider=ctx.task.provider,
        )  # fmt: skip
        if route is not None:
            await route.open()
        return route

    async def remove_credentials(self, ctx: RunContext) -> None:
        """Take the credential files out of the session (the next run installs them again);
        what cannot be removed is reported as a warning event."""
        if not self.config.credentials:
            return
        home = ctx.sandbox.path(HOME_TARGET) if ctx.sandbox is not None else HOME_TARGET
        left = await asyncio.to_thread(
            remove_files, ctx.session.home, self.config.credentials, home
        )
        if left:
            text = f"credential files left in the session (not regular files): {', '.join(left)}"
            ctx.events.emit(Message(level="warning", text=text))

    async def release(self, provider: Provider, sandbox: Sandbox, *, reuse: bool = True) -> None:
        """Give the sandbox back to where it came from (the pool, which keeps it for reuse
        only when ``reuse``), else destroy it."""
        if not await self.sandboxes.release(sandbox, reuse=reuse):
            await provider.destroy(sandbox.id)

    async def prepare(
        self, ctx: RunContext, sandbox: Sandbox, agent: Agent, prompt: str | None
    ) -> AgentLaunch:
        """Repo, prompt, agent config and credentials into the session and the sandbox."""
        task, session = ctx.task, ctx.session
        cloned = task.base_commit is None
        if task.base_commit is None:
            # No clone finished, so no agent ever ran here: a clone cut short (timeout,
            # SIGTERM, kill -9) left only its own files, which would block cloning again.
            await asyncio.to_thread(_empty, session.workspace)
            source = gitrepo.RepoSource(task.repo_kind, task.repo)
            base = await gitrepo.clone(source, task.ref, session.workspace, task.branch)
            ctx.task = task = await self.update(task.id, base_commit=base)
        # The checkout (made by host git) and the home are the agent's to change; a warm
        # sandbox from the pool meets this session's directories only now.
        for target in (sandbox.workdir, sandbox.path(HOME_TARGET)):
            await sandbox.adopt(target)
        # Inside, as the agent's own user, once the checkout is theirs; only when the fresh
        # clone (host git's, no agent has run) names any `.gitmodules`: without one the
        # sandboxed step would only exit 0, at the cost of a sandbox start (issue 16).
        if cloned and os.path.lexists(session.workspace / ".gitmodules"):
            warning = await gitrepo.init_submodules(sandbox)
            if warning is not None:
                self.emit(ctx, Message(level="warning", text=warning))
        text = prompt or task.prompt
        session.prompt_file.write_text(text)
        resume = task.agent_session_id if task.resumes and agent.supports_resume else None
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
        for path, data in launch.files.items():
            await sandbox.write_file_atomic(path, data, mode=0o600)
        await install_files(sandbox, self.config.credentials, actx.home)
        program = agent.program
        found = await sandbox.exec(
            ArgvCommand(argv=("sh", "-c", 'command -v "$1"', "hal-which", program)),
        )
        if not found.ok:
            raise AgentNotInstalled(
                f"agent program {program!r} is not installed in the {sandbox.provider} sandbox",
                hint=agent.install_hint,
            )
        no_network = sandbox.spec.network == "none"
        gateway_env = ctx.gateway.launcher_env(egress=no_network) if ctx.gateway else {}
        env = {**launch.env, **launch.command.env, **gateway_env}
        command = launch.command.model_copy(update={"env": env})
        return AgentLaunch(
            command=command, env=launch.env, files=launch.files, secret_env=launch.secret_env
        )

    async def follow(
        self,
        ctx: RunContext,
        manager: ProcessManager,
        pspec: ProcessSpec,
        agent: Agent,
        started: float,
        *,
        offset: int | None = None,
        parsed_offset: int = 0,
    ) -> int:
        """Stream the run's output and parsed events into the task's events until the process
        ends; return its exit status.

        The supervisor parsed the agent's raw output and wrote the (masked) events to
        ``pspec.events_path``, each tagged with the log offset that covers it; they are
        emitted once the log has been read that far, before the ``output`` event whose
        ``log_end`` covers them. An adopted run passes the log ``offset`` its events already
        cover and the ``parsed_offset`` of the parsed events already emitted.
        """
        if offset is None:
            offset = ctx.log_start if ctx.log_start is not None else file_size(ctx.session.log)
        timeout = ctx.task.timeout_s
        cap = min(OUTPUT_EVENTS_CAP, (pspec.log_cap or log_cap_from(self.environ)) // 2)
        follower = OutputFollower(ctx, pspec, offset, parsed_offset, emit=self.emit, cap=cap)

        # The exit file is a stat away, so it is checked often (from 5 ms, backing off to
        # _POLL_S); asking the manager whether the process lives can cost a subprocess (tmux
        # has-session), so that happens at most every _LIVENESS_S.
        delay, checked = _FIRST_POLL_S, -_LIVENESS_S
        disk = limits.DiskWatchdog(ctx.sandbox, self.config.home)
        await disk.start()
        usage = ctx.gateway.usage if ctx.gateway is not None else None
        while True:
            now = time.monotonic()
            if read_exit_status(pspec.exit_path) is not None or now - checked >= _LIVENESS_S:
                status = await manager.status(pspec)
                checked = now
                if status.state != "running":
                    break
            follower.pump()
            if usage is not None and ctx.gateway is not None:
                usage.pump(lambda event: self.emit(ctx, event))
                await ctx.gateway.keep_registered()
            await self.save_session(ctx)
            await disk.check()
            if timeout is not None and time.monotonic() - started > timeout:
                raise TaskTimeout(
                    f"task ran past its timeout of {timeout:g}s",
                    hint="raise it with --timeout SECONDS",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_S)
        await disk.check()  # an agent that died of a full disk ends as that, not as a crash
        while True:  # the rest, a step at a time so a large backlog does not block the loop
            if not follower.pump(final=True):
                break
            await self.save_session(ctx)
            await asyncio.sleep(0)
        await self.save_session(ctx)
        if usage is not None and ctx.gateway is not None:
            await ctx.gateway.settle()  # the gateway writes its call records in batches
            usage.pump(lambda event: self.emit(ctx, event), final=True)
        if status.state == "missing" or status.exit_code is None:
            current = self.store.get_task(ctx.task.id)
            if current.status in TAKEN_AWAY:
                raise Superseded(current.status)
            raise AgentFailed("the agent process vanished without an exit status")
        return status.exit_code

    async def finish(
        self,
        ctx: RunContext,
        status: TaskStatus,
        started: float,
        exit_code: int | None,
        *,
        error: HalError | None = None,
        files: int | None = None,
        note: str | None = None,
    ) -> TaskRecord:
        """Record the end of a run and emit ``task_end`` (nothing when the task was taken);
        in a thread, like :meth:`transition`."""
        return await asyncio.to_thread(
            self._finish, ctx, status, started, exit_code, error, files, note
        )

    def _finish(
        self,
        ctx: RunContext,
        status: TaskStatus,
        started: float,
        exit_code: int | None,
        error: HalError | None,
        files: int | None,
        note: str | None,
    ) -> TaskRecord:
        current = self.store.get_task(ctx.task.id)
        totals = ctx.totals
        try:
            record = self._transition(
                ctx,
                status,
                note,
                finished_at=time.time(),
                exit_code=exit_code,
                error_code=error.code if error else None,
                error_message=ctx.masker.mask(error.one_line()) if error else note,
                input_tokens=current.input_tokens + totals.input_tokens,
                output_tokens=current.output_tokens + totals.output_tokens,
                cost_usd=finish.add_cost(current.cost_usd, totals.cost_usd),
            )
        except Superseded:
            return self.store.get_task(ctx.task.id)
        ctx.events.emit(
            TaskEnd(
                status=status.value,
                exit_code=exit_code,
                error_code=error.code if error else None,
                error=error.one_line() if error else note,
                files_changed=files if files is not None else record.files_changed,
                duration_s=round(time.monotonic() - started, 3),
            )
        )
        return record


def _loop_deadline(timeout_s: float | None, started: float) -> float | None:
    """The event loop time at which a run that began at ``started`` (``time.monotonic()``)
    runs out of time, or None without a timeout."""
    if timeout_s is None:
        return None
    return asyncio.get_running_loop().time() + (started + timeout_s - time.monotonic())


def _empty(directory: Path) -> None:
    """Remove what is inside ``directory`` (not the directory: it may be a mount target)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
