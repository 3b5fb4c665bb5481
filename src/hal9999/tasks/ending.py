"""The end of a run: its final status and ``task_end`` recorded, and the task left as
the run found it (credential files out of the session, the sandbox given back, the
runner's fields cleared), or to whoever took it meanwhile."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from hal9999.agents.parsing import add_counts
from hal9999.config import HalConfig
from hal9999.credentials import remove_files
from hal9999.errors import HalError
from hal9999.events.models import Message, Phase, TaskEnd
from hal9999.process.base import run_ended
from hal9999.providers.base import Provider, Sandbox
from hal9999.store import Store, TaskRecord
from hal9999.tasks import finish
from hal9999.tasks.collect import drop_cut_locks
from hal9999.tasks.context import RunContext, Superseded, taken_from_us
from hal9999.tasks.recorder import RunRecorder
from hal9999.tasks.sandboxes import SandboxSource
from hal9999.tasks.session import HOME_TARGET
from hal9999.tasks.state import TaskStatus

if TYPE_CHECKING:
    from hal9999.tasks.retry import Retry


class RunEnding:
    """Records how a run ended and what it leaves behind."""

    def __init__(
        self, config: HalConfig, store: Store, record: RunRecorder, sandboxes: SandboxSource
    ) -> None:
        self.config = config
        self.store = store
        self.record = record
        self.sandboxes = sandboxes
        """Where the run's sandbox goes back to (the daemon's warm pool), if anywhere."""

    async def leave(self, ctx: RunContext, provider: Provider) -> None:
        """Whatever way the run ended: close its gateway route, take the credentials out,
        give the sandbox back (destroyed when the task was taken from this run) and clear
        the runner's fields, in one write, while the task is still this process's."""
        task = ctx.task
        # A run its end queued again for a retry leaves the task to its daemon (this
        # process), which holds it while it waits: its runner_pid stays.
        left: dict[str, Any] = {} if ctx.retried is not None else {"runner_pid": None}
        if not ctx.detached:
            await self._give_back(ctx, provider, left)
        if ctx.session_id is not None:  # a run cut short between a pump and its save
            left["agent_session_id"] = ctx.session_id
            ctx.session_id = None
        if ctx.owed:  # a run taken away before its final status
            await asyncio.to_thread(pay_owed, ctx)
        unsaved, ctx.unsaved = ctx.unsaved, {}  # a run taken away before its final status
        if unsaved or any(getattr(ctx.task, name) != value for name, value in left.items()):
            # One write for all; the runner's own fields only while the task is still
            # this process's (a resume since names its run there).
            ctx.task = await self.record.update(task.id, held_by=os.getpid(), **left, **unsaved)

    async def _give_back(self, ctx: RunContext, provider: Provider, left: dict[str, Any]) -> None:
        """The run's gateway route closed, credentials out and sandbox given back, unless
        another process took the task meanwhile; ``left`` gains the fields that clears."""
        task = ctx.task
        if ctx.gateway is not None:
            await ctx.gateway.close()
        now = self.store.task_or_none(task.id)  # None: removed with --force while running
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
        in a thread, like :meth:`RunRecorder.transition`."""
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
            "cost_usd": finish.add_cost(current.cost_usd, totals.known_cost),
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
                    record = self.record.transition_sync(
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
                    record = self.record.transition_sync(
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
