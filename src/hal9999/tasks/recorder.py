"""The one way a run changes its task: a checked status move and a field update, neither
stalling the event loop. Every piece of :class:`hal9999.tasks.runner.TaskRunner` that
writes the task is given the run's :class:`RunRecorder`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from hal9999.errors import TaskStateError
from hal9999.store import Store, TaskRecord
from hal9999.store.writelock import WriteBusy
from hal9999.tasks.context import RunContext, Superseded, taken_from_us
from hal9999.tasks.state import RESTING, TaskStatus, transition


class RunRecorder:
    """Moves a run's task on (compare-and-set) and writes its fields, in a thread or on the
    loop as each write allows."""

    def __init__(self, store: Store) -> None:
        self.store = store

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
            return await asyncio.to_thread(self.transition_sync, ctx, target, detail, **fields)

        def moved_then() -> TaskRecord:
            if first is not None:
                first()
            record = self.transition_sync(ctx, target, detail, **fields)
            if then is not None:
                then()
            return record

        return await asyncio.to_thread(moved_then)

    def transition_sync(
        self, ctx: RunContext, target: TaskStatus, detail: str | None, **fields: Any
    ) -> TaskRecord:
        """:meth:`transition` in this thread: for a step already off the event loop."""
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
