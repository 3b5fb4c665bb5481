"""One run of a task: sandbox, prepare, agent, stream, collect (:mod:`.finish`), release.

The runner owns a task only while it runs, and only once its caller claimed it
(:mod:`hal9999.tasks.claim`: a process that loses the claim runs nothing). Another ``hal``
process may stop or cancel the task meanwhile (it kills the process and the sandbox and
records the new state); the runner notices the record changed under it and leaves without
touching it again.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import time
from typing import TYPE_CHECKING, Any

from hal9999.agents.parsing import add_counts
from hal9999.agents.registry import resolve_agent
from hal9999.errors import (
    AgentFailed,
    DiskFull,
    DiskLimitExceeded,
    HalError,
    HomeError,
    TaskNotFound,
    TaskTimeout,
)
from hal9999.events.models import Phase, TaskEnd
from hal9999.process import pm2inside
from hal9999.process.base import run_ended
from hal9999.providers.base import Provider, Sandbox
from hal9999.providers.limits import release_if_full
from hal9999.store import TaskRecord
from hal9999.tasks import finish
from hal9999.tasks.collect import drop_cut_locks
from hal9999.tasks.context import (
    RunContext,
    Superseded,
    Vanished,
    memory_killed,
    offline_warning,
    taken_from_us,
)
from hal9999.tasks.follow import FollowSteps
from hal9999.tasks.launch import LaunchSteps, missing_program
from hal9999.tasks.plugins import load_process_manager
from hal9999.tasks.state import TaskStatus

if TYPE_CHECKING:
    from hal9999.tasks.retry import Retry


class TaskRunner(LaunchSteps, FollowSteps):
    """Runs tasks from the store to a final or resting state."""

    # -- the run -----------------------------------------------------------------------
    async def run(self, ctx: RunContext, prompt: str | None = None) -> TaskRecord:
        """Run the task once (or carry on an adopted run); returns the record in its final or
        resting state, as the run's last write left it (its runner and sandbox cleared)."""
        record = await self._run(ctx, prompt)
        return ctx.task if ctx.task.status == record.status else record

    async def _run(self, ctx: RunContext, prompt: str | None) -> TaskRecord:
        task = ctx.task  # claimed by this process (TaskService.run)
        agent = resolve_agent(task.agent, self.config.agent_settings(task.agent))
        provider = self.provider(task.provider)
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
                        if (await manager.status(ctx.pspec)).state == "exited":
                            ctx.sandbox = await finish.quiet_ended(provider, ctx.sandbox)
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
                    ctx.sandbox = await finish.end_leftovers(provider, ctx.sandbox)
                    # The patch is the agent's until this collection's scan clears it: its
                    # marker goes in the move's hop (not a hop of its own).
                    marker = ctx.session.patch_checked
                    unmark = functools.partial(marker.unlink, missing_ok=True)
                    then = unmark if ctx.checks_patch else None
                    await self.transition(ctx, TaskStatus.COLLECTING, then=then)
                    files = await finish.collect_result(
                        ctx, ctx.sandbox, self.update, unchecked=then is not None,
                        home=self.config.home,
                    )  # fmt: skip
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
            missing = missing_program(
                agent, task.provider, exit_code, ctx.session.log, ctx.log_start
            )
            if missing is not None:
                return await self.finish(
                    ctx, TaskStatus.FAILED, started, exit_code, error=missing, files=files
                )
            hint = f"see `hal task logs {task.id}`"
            if offline:
                hint += f"; {offline_warning(self.config, agent)}"
            error = memory_killed(ctx, agent.name) or AgentFailed(
                f"agent {agent.name} exited with status {exit_code}", hint=hint
            )
            return await self.finish(
                ctx, TaskStatus.FAILED, started, exit_code, error=error, files=files
            )
        except Superseded:
            return self.store.get_task(task.id)
        except (TaskTimeout, DiskLimitExceeded, Vanished) as exc:
            if ctx.pspec is not None:
                await manager.stop(ctx.pspec)
            # A vanished agent is stopped by nothing else, and where a process outlives its
            # command (a container, a bare ssh host) stopping the process manager ended only
            # the host's side: the sandbox is restarted first, so nothing the agent left
            # running (its environment cleared, in a session of its own) writes on while its
            # work is collected, past the limit that stopped it.
            outlives = ctx.sandbox is not None and pm2inside.hosts_daemons(ctx.sandbox)
            quiet = provider if isinstance(exc, Vanished) or outlives else None
            files = await finish.collect_leftovers(
                ctx, self.update, quiet=quiet, home=self.config.home
            )
            ended = TaskStatus.TIMED_OUT if isinstance(exc, TaskTimeout) else TaskStatus.FAILED
            failure = AgentFailed(str(exc)) if isinstance(exc, Vanished) else exc
            return await self.finish(ctx, ended, started, exit_code, error=failure, files=files)
        except (HalError, OSError) as exc:
            if isinstance(exc, OSError):  # a host write of hal's (a session file) found
                if exc.errno not in _UNWRITABLE:  # the disk full or read-only: say so
                    raise  # (else the task read "interrupted", as if hal had died)
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
            # A run its end queued again for a retry leaves the task to its daemon (this
            # process), which holds it while it waits: its runner_pid stays.
            left: dict[str, Any] = {} if ctx.retried is not None else {"runner_pid": None}
            if not ctx.detached:
                if ctx.gateway is not None:
                    await ctx.gateway.close()
                try:
                    now: TaskRecord | None = self.store.get_task(task.id)
                except TaskNotFound:  # removed with --force while running
                    now = None
                # Stopped, then resumed by another process already: the credential files in
                # the session are that run's.
                if now is None or now.runner_pid in (None, os.getpid()):
                    await self.remove_credentials(ctx)
                if ctx.sandbox is not None:
                    # A task stopped or cancelled from outside: whoever did it destroys the
                    # sandbox too, so it must not go back to the pool for the next task.
                    taken = now is None or taken_from_us(now)
                    if taken and ctx.pspec is not None:
                        # Its stopper stops the run (and waits for it): the sandbox goes only
                        # once the run has ended, a relay's last bring-back of the work with it.
                        await run_ended(ctx.pspec.exit_path)
                    await self.release(provider, ctx.sandbox, reuse=not taken)
                    left["sandbox_id"] = None
                    if ctx.collecting and (now is None or now.runner_pid in (None, os.getpid())):
                        # Its sandbox gone, no git of the session lives: a collection cut
                        # short (a Ctrl-C) leaves no lock for the next run to meet.
                        await asyncio.to_thread(drop_cut_locks, ctx.session, task.branch)
            if ctx.session_id is not None:  # a run cut short between a pump and its save
                left["agent_session_id"] = ctx.session_id
                ctx.session_id = None
            if ctx.owed:  # a run taken away before its final status
                await asyncio.to_thread(pay_owed, ctx)
            unsaved, ctx.unsaved = ctx.unsaved, {}  # a run taken away before its final status
            if unsaved or any(getattr(ctx.task, name) != value for name, value in left.items()):
                # One write for all; the runner's own fields only while the task is still
                # this process's (a resume since names its run there).
                ctx.task = await self.update(task.id, held_by=os.getpid(), **left, **unsaved)

    async def release(self, provider: Provider, sandbox: Sandbox, *, reuse: bool = True) -> None:
        """Give the sandbox back to where it came from (the pool, which keeps it for reuse
        only when ``reuse``), else destroy it."""
        if not await self.sandboxes.release(sandbox, reuse=reuse):
            await provider.destroy(sandbox.id)

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
        # What the run owes before its final status (the record of the branch it moved),
        # in this hop and in that order: its failure (a full disk) is the run's, and
        # no hop of its own stands on the way to the end.
        pay_owed(ctx)
        current = self.store.get_task(ctx.task.id)
        totals = ctx.totals
        usage = {
            "input_tokens": add_counts(current.input_tokens, totals.input_tokens),
            "output_tokens": add_counts(current.output_tokens, totals.output_tokens),
            "cost_usd": finish.add_cost(current.cost_usd, totals.cost_usd),
        }
        message = ctx.masker.mask(error.one_line()) if error else note
        retry = self._retry(ctx, status, current, error)
        # The final phase and task_end (and a retry's phase) in one batch of the event log:
        # one index transaction and one fsync, not one each.
        with ctx.events.together():
            try:
                if retry is not None:
                    # Failed, and queued again for the retry in the same write: a process that
                    # dies after it leaves a queued task (recovery takes it on), never a
                    # `failed` one whose retry is owed. The sandbox goes back in `run`.
                    record = self._transition(
                        ctx,
                        TaskStatus.QUEUED,
                        note,
                        via=TaskStatus.FAILED,
                        sandbox_id=None,
                        **retry.fields(time.time()),
                        **usage,
                    )
                    ctx.retried = retry
                else:
                    # What the end of `run` would write next, in this write: the run's follower
                    # is answered once the run is over, and a second write would add to
                    # that wait. A pool's sandbox is its row's (the next daemon
                    # resets or destroys it). One made for this run alone is named by nothing
                    # but this record: the runner and it stay on it until the sandbox is gone
                    # (the end of `run` clears both), so a run killed in between leaves a final
                    # task naming a sandbox and a dead runner, which the next hal command
                    # sweeps (tasks/deadruns.py); cleared here, only `hal serve` found it.
                    keep = ctx.detached or (
                        ctx.sandbox is not None and not self.sandboxes.holds(ctx.sandbox)
                    )
                    gone = {} if keep else {"runner_pid": None, "sandbox_id": None}
                    record = self._transition(
                        ctx,
                        status,
                        note,
                        **gone,
                        finished_at=time.time(),
                        exit_code=exit_code,
                        error_code=error.code if error else None,
                        error_message=message,
                        **usage,
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
            if retry is not None:
                previous = TaskStatus.FAILED.value
                phase = Phase(phase=record.status, previous=previous, detail=retry.detail(message))
                ctx.events.emit(phase)
            return record

    @staticmethod
    def _retry(
        ctx: RunContext, status: TaskStatus, current: TaskRecord, error: HalError | None
    ) -> Retry | None:
        """The retry the run's policy (the daemon's) gives a run ending ``status``; None
        for a run that did not fail, or without a policy (in-process: its caller retries)."""
        if ctx.retry is None or status is not TaskStatus.FAILED:
            return None
        code = error.code if error else None
        return ctx.retry(current.model_copy(update={"status": status.value, "error_code": code}))


def pay_owed(ctx: RunContext) -> None:
    """Make the blocking writes the run owes (:attr:`RunContext.owed`), in order, once."""
    owed, ctx.owed = ctx.owed, []
    for write in owed:
        write()


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
