"""One run of a task, in order: launch the agent in its sandbox, follow it to its end,
collect its result, record how it ended, and leave the task.

:class:`TaskRunner` orders the run and decides its end; each step is a piece it builds
and owns: :class:`~hal9999.tasks.launch.AgentLauncher` (sandbox, session, agent start),
:class:`~hal9999.tasks.follow.RunFollower` (output and events to the process's end),
:class:`~hal9999.tasks.collector.ResultCollector` (the work brought back),
:class:`~hal9999.tasks.ending.RunEnding` (the final status, the sandbox given back), all
writing the task through one :class:`~hal9999.tasks.recorder.RunRecorder`.

The runner owns a task only while it runs, and only once its caller claimed it
(:mod:`hal9999.tasks.claim`: a process that loses the claim runs nothing). Another ``hal``
process may stop or cancel the task meanwhile (it kills the process and the sandbox and
records the new state); the runner notices the record changed under it and leaves without
touching it again.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Mapping

from hal9999.agents.base import Agent
from hal9999.agents.registry import resolve_agent
from hal9999.config import HalConfig
from hal9999.errors import (
    AgentFailed,
    DiskFull,
    DiskLimitExceeded,
    HalError,
    HomeError,
    TaskTimeout,
)
from hal9999.process.base import ProcessManager
from hal9999.providers.base import Provider
from hal9999.providers.limits import release_if_full
from hal9999.store import Store, TaskRecord
from hal9999.tasks import finish
from hal9999.tasks.collector import ResultCollector
from hal9999.tasks.context import (
    ChannelFinder,
    RunContext,
    Superseded,
    Vanished,
    memory_killed,
    offline_warning,
)
from hal9999.tasks.ending import RunEnding
from hal9999.tasks.follow import RunFollower
from hal9999.tasks.launch import AgentLauncher, missing_program
from hal9999.tasks.plugins import Plugins
from hal9999.tasks.recorder import RunRecorder
from hal9999.tasks.sandboxes import DirectSource, SandboxSource
from hal9999.tasks.state import TaskStatus


class TaskRunner:
    """Runs tasks from the store to a final or resting state."""

    def __init__(
        self,
        config: HalConfig,
        store: Store,
        environ: Mapping[str, str],
        plugins: Plugins | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.plugins = plugins or Plugins(config)
        """This process's providers and process managers (the daemon's own, in a daemon)."""
        self.record = RunRecorder(store)
        sandboxes = DirectSource()
        self.launcher = AgentLauncher(config, store, environ, self.record, sandboxes)
        self.follower = RunFollower(config, store, environ, self.record)
        self.collector = ResultCollector(config, self.record)
        self.ending = RunEnding(config, store, self.record, sandboxes)

    @property
    def sandboxes(self) -> SandboxSource:
        """Where runs get sandboxes and give them back: created per run, or the daemon's
        warm pool."""
        return self.launcher.sandboxes

    @sandboxes.setter
    def sandboxes(self, source: SandboxSource) -> None:
        self.launcher.sandboxes = self.ending.sandboxes = source

    @property
    def channel_for(self) -> ChannelFinder | None:
        """How a hive agent's run finds its MCP channel (the composition root gives it)."""
        return self.launcher.channel_for

    @channel_for.setter
    def channel_for(self, find: ChannelFinder | None) -> None:
        self.launcher.channel_for = find

    def provider(self, name: str) -> Provider:
        """The provider ``name`` under this runner's config, built once (:class:`Plugins`)."""
        return self.plugins.provider(name)

    async def run(self, ctx: RunContext, prompt: str | None = None) -> TaskRecord:
        """Run the task once (or carry on an adopted run); returns the record in its final or
        resting state, as the run's last write left it (its runner and sandbox cleared)."""
        record = await self._run(ctx, prompt)
        return ctx.task if ctx.task.status == record.status else record

    async def _run(self, ctx: RunContext, prompt: str | None) -> TaskRecord:
        task = ctx.task  # claimed by this process (TaskService.run)
        agent = resolve_agent(task.agent, self.config.agent_settings(task.agent))
        provider = self.provider(task.provider)
        manager = self.plugins.manager(task.process_manager)
        started = time.monotonic() if ctx.adopted is None else ctx.adopted.started
        exit_code: int | None = None
        offline = False
        # The timeout bounds the whole run (sandbox, clone, agent, collection), not only the
        # agent: a clone stuck on a silent server must end too.
        deadline = asyncio.timeout_at(_loop_deadline(task.timeout_s, started))
        try:
            try:
                async with deadline:
                    if ctx.adopted is None:
                        offline = await self.launcher.launch(
                            ctx, provider, manager, agent, prompt, started
                        )
                        assert ctx.pspec is not None
                        exit_code = await self.follower.follow(
                            ctx, manager, ctx.pspec, agent, started
                        )
                    else:
                        exit_code = await self.follower.follow_adopted(
                            ctx, provider, manager, agent, started
                        )
                    files = await self.collector.collect(ctx, provider)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise
                status = self.store.get_task(task.id).status
                raise finish.timed_out(task.timeout_s, status) from exc
            return await self._judged(ctx, agent, started, exit_code, offline, files)
        except Superseded:
            return self.store.get_task(task.id)
        except (TaskTimeout, DiskLimitExceeded, Vanished) as exc:
            return await self._cut_short(ctx, exc, provider, manager, started, exit_code)
        except (HalError, OSError) as exc:
            return await self._failed(ctx, exc, manager, started, exit_code)
        except asyncio.CancelledError as cancelled:
            if ctx.detached:
                raise  # the daemon is shutting down; the agent runs on, to be adopted
            await self._cancelled(ctx, cancelled, manager, started, exit_code)
            raise
        finally:
            await self.ending.leave(ctx, provider)

    async def _judged(
        self,
        ctx: RunContext,
        agent: Agent,
        started: float,
        exit_code: int | None,
        offline: bool,
        files: int,
    ) -> TaskRecord:
        """The end of a run whose agent exited and whose work is collected: succeeded on a
        0 exit status, else failed saying why."""
        task = ctx.task
        refused = ctx.gateway.refusal(self.store) if ctx.gateway is not None else None
        if refused is not None:  # the agent's work is collected above: nothing is lost
            return await self.ending.finish(
                ctx, TaskStatus.FAILED, started, exit_code, error=refused, files=files
            )
        if exit_code == 0:
            return await self.ending.finish(
                ctx, TaskStatus.SUCCEEDED, started, exit_code, files=files
            )
        missing = missing_program(agent, task.provider, exit_code, ctx.session.log, ctx.log_start)
        if missing is not None:
            return await self.ending.finish(
                ctx, TaskStatus.FAILED, started, exit_code, error=missing, files=files
            )
        hint = f"see `hal task logs {task.id}`"
        if offline:
            hint += f"; {offline_warning(self.config, agent, daemon=ctx.mcp is not None)}"
        error = memory_killed(ctx, agent.name) or AgentFailed(
            f"agent {agent.name} exited with status {exit_code}", hint=hint
        )
        return await self.ending.finish(
            ctx, TaskStatus.FAILED, started, exit_code, error=error, files=files
        )

    async def _cut_short(
        self,
        ctx: RunContext,
        exc: TaskTimeout | DiskLimitExceeded | Vanished,
        provider: Provider,
        manager: ProcessManager,
        started: float,
        exit_code: int | None,
    ) -> TaskRecord:
        """A run its timeout or disk limit stopped, or whose agent vanished: the agent
        stopped, what it did kept, and the task timed out or failed."""
        if ctx.pspec is not None:
            await manager.stop(ctx.pspec)
        files = await self.collector.leftovers(ctx, provider, exc)
        ended = TaskStatus.TIMED_OUT if isinstance(exc, TaskTimeout) else TaskStatus.FAILED
        failure = AgentFailed(str(exc)) if isinstance(exc, Vanished) else exc
        return await self.ending.finish(ctx, ended, started, exit_code, error=failure, files=files)

    async def _failed(
        self,
        ctx: RunContext,
        exc: HalError | OSError,
        manager: ProcessManager,
        started: float,
        exit_code: int | None,
    ) -> TaskRecord:
        """A run a step of hal's failed: the agent stopped, the task failed saying why."""
        task = ctx.task
        if isinstance(exc, OSError):  # a host write of hal's (a session file) found
            if exc.errno not in _UNWRITABLE:  # the disk full or read-only: say so
                raise exc  # (else the task read "interrupted", as if hal had died)
            exc = _unwritable(exc, ctx)
        if ctx.pspec is not None:
            await manager.stop(ctx.pspec)
        # A disk that filled outside the agent's watch (the clone, the collection): the
        # reserve the watchdog would have given up is what records this end (else the
        # task read "interrupted", the hal process "died", its reason lost), and the
        # end says the disk is full, not only what git failed to write.
        if release_if_full(self.config.home) and not isinstance(exc, DiskFull):
            exc = DiskFull(
                f"the disk holding hal's home is full ({exc})",
                hint=f"free space on it, then `hal task resume {task.id}`",
            )
        return await self.ending.finish(ctx, TaskStatus.FAILED, started, exit_code, error=exc)

    async def _cancelled(
        self,
        ctx: RunContext,
        cancelled: asyncio.CancelledError,
        manager: ProcessManager,
        started: float,
        exit_code: int | None,
    ) -> None:
        """Ctrl-C: stop the agent and keep the session; the sandbox goes when the run
        leaves the task."""
        if ctx.pspec is not None:
            await manager.stop(ctx.pspec)
        reason = finish.cancel_reason(cancelled)
        await self.ending.finish(ctx, TaskStatus.CANCELLED, started, exit_code, note=reason)


def _loop_deadline(timeout_s: float | None, started: float) -> float | None:
    """The event loop time at which a run that began at ``started`` (``time.monotonic()``)
    runs out of time, or None without a timeout."""
    if timeout_s is None:
        return None
    return asyncio.get_running_loop().time() + (started + timeout_s - time.monotonic())


_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (*_FULL, errno.EROFS, errno.EACCES, errno.EPERM)
"""The errnos of a host write of hal's that end the task ``failed`` saying why: the disk
full (``disk_full``), or hal's home read-only or not writable by hal (``home_unusable``)."""


def _unwritable(exc: OSError, ctx: RunContext) -> DiskFull | HomeError:
    """A failed host write for lack of space, said as the collection's own disk full is, or
    for a home hal cannot write (read-only, or its permissions), said the same way."""
    where = f" writing {exc.filename}" if exc.filename else ""
    again = (
        f"`hal task resume {ctx.task.id}` runs its agent there again and collects what it leaves"
    )
    safe = f"the work is safe in the session checkout {ctx.session.workspace}"
    if exc.errno in _FULL:
        return DiskFull(
            f"the disk holding hal's home is full ({exc.strerror}{where})",
            hint=f"free space on it; {safe}; {again}",
        )
    return HomeError(
        f"hal's home cannot be written ({exc.strerror}{where})",
        hint=f"make it writable by hal (read-only mount or permissions); {safe}; {again}",
    )
