"""The task state machine, as data: the allowed moves between the states of
:mod:`hal9999.statuses` and :func:`transition`, the one function that changes a task's
status (checked, compare-and-set, with its event)."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol

from hal9999.errors import TaskStateError
from hal9999.statuses import ACTIVE as ACTIVE
from hal9999.statuses import FINAL as FINAL
from hal9999.statuses import FINAL_VALUES as FINAL_VALUES
from hal9999.statuses import RESTING as RESTING
from hal9999.statuses import RESUMABLE as RESUMABLE
from hal9999.statuses import TaskStatus as TaskStatus

if TYPE_CHECKING:  # the states alone are light: `hal task show` asks them
    from hal9999.events.models import Event
    from hal9999.store import Store, TaskRecord


_ENDINGS = {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.STOPPED, TaskStatus.INTERRUPTED}

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.PROVISIONING, *_ENDINGS}),
    # The timeout bounds the whole task, so a sandbox or a clone that hangs times out too.
    TaskStatus.PROVISIONING: frozenset({TaskStatus.PREPARING, TaskStatus.TIMED_OUT, *_ENDINGS}),
    TaskStatus.PREPARING: frozenset({TaskStatus.RUNNING, TaskStatus.TIMED_OUT, *_ENDINGS}),
    TaskStatus.RUNNING: frozenset({TaskStatus.COLLECTING, TaskStatus.TIMED_OUT, *_ENDINGS}),
    TaskStatus.COLLECTING: frozenset({TaskStatus.SUCCEEDED, TaskStatus.TIMED_OUT, *_ENDINGS}),
    # Resting states may be resumed (back to queued); a resumed task keeps its session.
    TaskStatus.SUCCEEDED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.FAILED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.TIMED_OUT: frozenset({TaskStatus.QUEUED}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.STOPPED: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    # An interrupted task whose agent still runs (or has just ended) is adopted by a daemon.
    TaskStatus.INTERRUPTED: frozenset(
        {TaskStatus.QUEUED, TaskStatus.STOPPED, TaskStatus.CANCELLED, TaskStatus.RUNNING}
    ),
}


def check_transition(current: str, target: str) -> TaskStatus:
    """Validate the move ``current -> target``; raise :class:`TaskStateError` if not allowed."""
    src, dst = TaskStatus(current), TaskStatus(target)
    if dst not in TRANSITIONS[src]:
        raise TaskStateError(
            f"a {src.value} task cannot become {dst.value}",
            hint="see `hal task show ID` for its state",
        )
    return dst


def _allowed(current: str, target: TaskStatus, via: TaskStatus | None) -> bool:
    """Whether the move from ``current`` (through ``via``) to ``target`` is in the table."""
    try:
        src = TaskStatus(current)
    except ValueError:
        return False
    if via is None:
        return target in TRANSITIONS[src]
    return via in TRANSITIONS[src] and target in TRANSITIONS[via]


class EventWriter(Protocol):
    """Where :func:`transition` records the ``phase`` event (an ``EventLog``)."""

    def emit(self, event: Event) -> Event:
        """Record one event."""
        ...


def transition(
    store: Store,
    events: EventWriter | None,
    task_id: str,
    target: TaskStatus,
    *,
    expect: str | Collection[str] | None = None,
    detail: str | None = None,
    via: TaskStatus | None = None,
    wait: bool = True,
    **fields: Any,
) -> tuple[str, TaskRecord]:
    """Move a task to ``target``; returns its status before and its record after.

    The move must be in :data:`TRANSITIONS` from the status the task has *when it is
    written*: the write is ``UPDATE ... WHERE status = <the status just read>``, and when
    another process changed it in between, the check runs again on the new status. With
    ``expect``, the task must also be in one of those states (a runner expects the state it
    put the task in; anything else means the task was taken from it); one state expected is
    checked and written without the read first, the write's compare-and-set being the
    check that the task is still in it. Raises
    :class:`TaskStateError` when the move is not allowed. ``fields`` are written in the
    same statement; a resting state is committed durably, and the LLM gateway told (its
    grants of the task go at once: :func:`~hal9999.gateway.rested.tell_rested`). Then the
    ``phase`` event.

    With ``via``, the task passes through ``via`` to ``target`` in that one write (a run
    that fails and is queued again for its retry: ``failed`` alone would be final to every
    reader, and a crash between two writes would keep it so). Both moves must be allowed;
    the write is durable when either state is resting; the ``phase`` event is ``via``'s
    (``detail`` says why it came to that), and the caller records the rest of the way
    (a run's ``task_end``, then ``target``'s phase).

    ``wait=False`` (a move that is not durable): raise
    :class:`~hal9999.store.writelock.WriteBusy` at once, before anything is written or
    emitted, when another writer holds the write lock (see ``Store.set_status``).
    """
    wanted = {expect} if isinstance(expect, str) else set(expect) if expect is not None else None
    durable = target in RESTING or via in RESTING
    updated = None
    if wanted is not None and len(wanted) == 1:
        # A runner's move from the state it put the task in: checked against the table on
        # that state, then written with it as the compare-and-set's expectation, without
        # reading the status first (a statement a move, five a task). A task
        # moved meanwhile is not written (set_status's read in its transaction) and goes
        # the way below, which reads its status and says why.
        (current,) = wanted
        if _allowed(current, target, via):
            updated = store.set_status(
                task_id, target.value, expect=current, durable=durable, wait=wait, **fields
            )
    while updated is None:
        # The status alone: set_status reads the whole record in its write transaction
        # (not read and validated twice on a task's every step).
        current = store.task_status(task_id)
        if wanted is not None and current not in wanted:
            raise TaskStateError(
                f"task {task_id} is {current}, not {' or '.join(sorted(wanted))}",
                hint=f"see `hal task show {task_id}`",
            )
        if via is not None:
            check_transition(current, via)
            check_transition(via, target)
        else:
            check_transition(current, target)
        updated = store.set_status(
            task_id, target.value, expect=current, durable=durable, wait=wait, **fields
        )
    if target in RESTING:  # its grant at the gateway goes now (its runner may be dead)
        from hal9999.gateway.rested import tell_rested

        tell_rested(store.path.parent, task_id)
    if events is not None:
        from hal9999.events.models import Phase

        shown = via or target
        events.emit(Phase(phase=shown.value, previous=current, detail=detail))
    return current, updated
