"""Following a run, launched here or adopted from an earlier ``hal`` process: stream its
output and parsed events into the task's events until the process ends, folding the
agent's usage and session id into the task."""

from __future__ import annotations

import asyncio
import functools
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999.agents.base import Agent
from hal9999.config import HalConfig
from hal9999.errors import TaskTimeout
from hal9999.events.models import AgentSession, Event, Usage
from hal9999.events.rotation import size_of, with_rotated
from hal9999.process.base import ProcessManager, read_exit_status
from hal9999.process.caplog import log_cap_from
from hal9999.process.supervisor import ended_path
from hal9999.providers import limits
from hal9999.providers.base import Provider
from hal9999.spec import ProcessSpec
from hal9999.store import Store
from hal9999.tasks import finish
from hal9999.tasks.context import RunContext, Superseded, Vanished, taken_from_us
from hal9999.tasks.output import OUTPUT_EVENTS_CAP, OutputFollower
from hal9999.tasks.recorder import RunRecorder

if TYPE_CHECKING:
    from hal9999.gateway.tasks import GatewayRoute

_POLL_S = 0.05
_FIRST_POLL_S = 0.005
_LIVENESS_S = 1.0
_QUIET_AFTER_S = 2.0
_QUIET_POLL_S = 0.25
"""A run with no new output for ``_QUIET_AFTER_S`` is looked at every ``_QUIET_POLL_S``
rather than every ``_POLL_S`` (its end still wakes the follower at once through the FIFO or
pidfd): 100 idle agents polled often would cost the daemon a fifth of a core."""


class _EndedSignal:
    """The read end of the supervisor's "exit status written" FIFO (see
    :func:`~hal9999.process.supervisor.ended_path`): a nap ends as soon as a byte arrives,
    so a run that ends is seen at once rather than up to ``_POLL_S`` later."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._fired = False
        self._spent = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._fire)

    @classmethod
    def open(
        cls, exit_path: Path, pidfd: Callable[[], int | None] | None = None
    ) -> _EndedSignal | None:
        """Listen on the FIFO beside ``exit_path``, or else on a pidfd of the supervisor
        where the manager gives one (``direct``: readable once it has exited); None when
        there is neither (a run started by an older hal, a process manager inside the
        sandbox), and the caller polls."""
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(ended_path(exit_path), flags)
        except OSError:
            process = pidfd() if pidfd is not None else None
            return None if process is None else cls(process)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return cls(fd)

    def _fire(self) -> None:
        # Readable for good once the writer has closed (level-triggered): listen no more.
        self._loop.remove_reader(self._fd)
        self._fired = True
        _wake(self._waiter)

    async def nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the exit status is written meanwhile. Only the first
        nap after the signal is cut short: should it come without the exit status (a writer
        that wrote nothing), the follower polls as before rather than spin."""
        if self._spent:
            await asyncio.sleep(seconds)
            return
        if not self._fired:
            # A future and a timer, not wait_for (a task a nap, for each running agent).
            self._waiter = waiter = self._loop.create_future()
            timer = self._loop.call_later(seconds, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._spent = self._fired

    def close(self) -> None:
        if not self._fired:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class RunFollower:
    """Streams a run to its end (and re-opens an adopted run's gateway route)."""

    def __init__(
        self, config: HalConfig, store: Store, environ: Mapping[str, str], record: RunRecorder
    ) -> None:
        self.config = config
        self.store = store
        self.environ = environ
        self.record = record

    async def follow_adopted(
        self,
        ctx: RunContext,
        provider: Provider,
        manager: ProcessManager,
        agent: Agent,
        started: float,
    ) -> int:
        """Carry on following a run an earlier ``hal`` process started (``ctx.adopted``),
        from where its events stop; return the agent's exit status."""
        assert ctx.adopted is not None
        ctx.totals = ctx.adopted.totals
        ctx.sandbox, ctx.pspec = ctx.adopted.sandbox, ctx.adopted.pspec
        if (await manager.status(ctx.pspec)).state == "exited":
            ctx.sandbox = await finish.quiet_ended(provider, ctx.sandbox)
        ctx.gateway = await self.readopt_gateway(ctx, agent)
        return await self.follow(
            ctx,
            manager,
            ctx.pspec,
            agent,
            started,
            offset=ctx.adopted.offset,
            parsed_offset=ctx.adopted.parsed_offset,
        )

    async def readopt_gateway(self, ctx: RunContext, agent: Agent) -> GatewayRoute | None:
        """The adopted run's gateway route: its token registered again (the gateway may have
        restarted too), its calls' usage events going on from the last one emitted."""
        from hal9999.gateway.tasks import restore_route

        route = restore_route(
            self.config, agent, ctx.task.id, self.environ, ctx.secrets,
            run_dir=ctx.session.run_dir, store=self.store, provider=ctx.task.provider,
            keys=ctx.upstream_keys,
        )  # fmt: skip
        if route is not None:
            await route.open()
        return route

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
            offset = ctx.log_start if ctx.log_start is not None else size_of(ctx.session.log)
        timeout = ctx.task.timeout_s
        cap = min(OUTPUT_EVENTS_CAP, (pspec.log_cap or log_cap_from(self.environ)) // 2)
        follower = OutputFollower(ctx, pspec, offset, parsed_offset, emit=self.emit, cap=cap)

        # The exit file is a stat away, so it is checked often (from 5 ms, backing off to
        # _POLL_S); asking the manager whether the process lives can cost a subprocess (tmux
        # has-session), so that happens at most every _LIVENESS_S: for a process the manager
        # has just started, first after _LIVENESS_S; for an adopted one, now.
        delay = _FIRST_POLL_S
        checked = -_LIVENESS_S if ctx.adopted is not None else time.monotonic()
        heard = time.monotonic()  # when output last came
        records = with_rotated(ctx.session.log, ctx.session.events)
        disk = limits.DiskWatchdog(ctx.sandbox, self.config.home, records)
        await disk.start()
        usage = ctx.gateway.usage if ctx.gateway is not None else None
        # Before the first check: no lost wake-up.
        pidfd: Callable[[], int | None] | None = None
        if (ended_fd := getattr(manager, "ended_fd", None)) is not None:
            pidfd = functools.partial(ended_fd, pspec)
        ended = _EndedSignal.open(pspec.exit_path, pidfd)
        try:
            while True:
                now = time.monotonic()
                if read_exit_status(pspec.exit_path) is not None or now - checked >= _LIVENESS_S:
                    status = await manager.status(pspec)
                    checked = now
                    if status.state != "running":
                        break
                if follower.pump() or follower.idle_since is None:
                    heard = now
                    delay = min(delay, _POLL_S)  # it speaks again: look soon
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
                if ended is None:
                    await asyncio.sleep(delay)
                else:
                    await ended.nap(delay)
                quiet = time.monotonic() - heard >= _QUIET_AFTER_S
                delay = min(delay * 2, _QUIET_POLL_S if quiet else _POLL_S)
        finally:
            if ended is not None:
                ended.close()
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
            if taken_from_us(current):
                raise Superseded(current.status)
            raise Vanished("the agent process vanished without an exit status")
        return status.exit_code

    def emit(self, ctx: RunContext, event: Event) -> None:
        """Record an event, folding usage and session ids into the task (the gateway's exact
        figures, when the agent goes through it, instead of what the agent says). A session
        id is only noted here (emit is synchronous, called from the output pumps); the
        awaited :meth:`save_session` right after the pump writes it."""
        if isinstance(event, Usage):
            if ctx.gateway is None or event.source == "gateway":
                ctx.totals.add(event)
            else:
                ctx.totals.add_reported(event)
        elif isinstance(event, AgentSession):
            ctx.session_id = event.session_id
        ctx.events.emit(event)

    async def save_session(self, ctx: RunContext) -> None:
        """Write the agent session id :meth:`emit` noted, if any, to the task's record."""
        if ctx.session_id is not None:
            await self.record.update(ctx.task.id, agent_session_id=ctx.session_id)
            ctx.session_id = None
