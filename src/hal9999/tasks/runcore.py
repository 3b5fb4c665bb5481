"""What every step of a run shares: the runner's config, store and sandbox source, and the
one way a run changes its task (a checked transition, a field update, an event).

:class:`hal9999.tasks.runner.TaskRunner` is built from this core and two sets of steps, by
concern: :mod:`.launch` (provision, prepare, start the agent) and :mod:`.follow` (stream a
started or adopted run to its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from hal9999.config import HalConfig
from hal9999.errors import TaskStateError
from hal9999.events.models import AgentSession, Event, Usage
from hal9999.providers.base import Provider
from hal9999.store import Store, TaskRecord
from hal9999.store.writelock import WriteBusy
from hal9999.tasks.context import RunContext, Superseded, taken_from_us
from hal9999.tasks.plugins import load_provider_for
from hal9999.tasks.sandboxes import DirectSource, SandboxSource
from hal9999.tasks.state import RESTING, TaskStatus, transition


class RunnerCore:
    """The state a run's steps share, and how they record what happens."""

    def __init__(self, config: HalConfig, store: Store, environ: Mapping[str, str]) -> None:
        self.config = config
        self.store = store
        self.environ = environ
        self.sandboxes: SandboxSource = DirectSource()
        """Where runs get sandboxes: created per run, or the daemon's warm pool."""
        self._providers: dict[str, Provider] = {}

    def provider(self, name: str) -> Provider:
        """The provider ``name`` under this runner's config, built once: a provider object
        is made to be shared (a daemon's pool uses one for all its sandboxes at once), and
        building one (its settings validated, its helpers and host checked) was most of a
        task's creation and a part of its run."""
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = load_provider_for(self.config, name)
        return found

    # -- state -------------------------------------------------------------------------
    async def transition(
        self,
        ctx: RunContext,
        target: TaskStatus,
        detail: str | None = None,
        *,
        then: Callable[[], object] | None = None,
        first: Callable[[], object] | None = None,
        **fields: Any,
    ) -> TaskRecord:
        """Move the task on from the state this run put it in (compare-and-set); raises
        :class:`Superseded` when another process took the task meanwhile. The database work
        runs in a thread: a write lock held elsewhere must not stall the event loop; a
        daemon's move that is not durable is written on the loop when the lock is free at
        once (its phase event is the flusher's to write), else in a thread as well.
        ``then``: the blocking step the run takes next, once the move is written, in the
        same thread hop (each hop costs a busy daemon its thread's wake-up and GIL
        hand-overs). ``first``: the blocking step the move waits for, made in the same hop
        before it is written (its failure leaves the task where it was)."""
        if then is None and first is None:
            if target not in RESTING and getattr(ctx.events, "background", False):
                # No fsync to wait for, the event written by the flusher: a commit without
                # the hop when nobody holds the write lock (the hop costs a busy
                # daemon more CPU than the move); when another writer holds it, in a thread.
                with contextlib.suppress(WriteBusy):
                    return self._move(ctx, target, detail, fields, wait=False)
            return await asyncio.to_thread(self._transition, ctx, target, detail, **fields)

        def moved_then() -> TaskRecord:
            if first is not None:
                first()
            record = self._transition(ctx, target, detail, **fields)
            if then is not None:
                then()
            return record

        return await asyncio.to_thread(moved_then)

    def _transition(
        self, ctx: RunContext, target: TaskStatus, detail: str | None, **fields: Any
    ) -> TaskRecord:
        return self._move(ctx, target, detail, fields)

    def _move(
        self,
        ctx: RunContext,
        target: TaskStatus,
        detail: str | None,
        fields: dict[str, Any],
        *,
        wait: bool = True,
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
                wait=wait,
                **{**ctx.unsaved, **fields},
            )
            ctx.unsaved.clear()
        except TaskStateError:
            current = self.store.get_task(ctx.task.id)
            if taken_from_us(current):  # stopped, and perhaps resumed by another process since
                raise Superseded(current.status) from None
            raise
        return ctx.task

    async def update(
        self, task_id: str, *, held_by: int | None = None, **fields: Any
    ) -> TaskRecord:
        """Write ``fields`` to the task's record in a thread: a write lock held elsewhere
        must not stall the event loop (the daemon's API and every other run share it).
        ``held_by``: see :meth:`hal9999.store.Store.update_task`."""
        return await asyncio.to_thread(self.store.update_task, task_id, held_by=held_by, **fields)

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
