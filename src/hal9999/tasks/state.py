"""The task state machine, as data: the states, the allowed moves, one function to check them."""

from __future__ import annotations

from enum import StrEnum

from hal9999.errors import TaskStateError


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"  # created, waiting for a sandbox
    PROVISIONING = "provisioning"  # acquiring a sandbox
    PREPARING = "preparing"  # repo, branch, credentials, agent config into the session
    RUNNING = "running"  # the agent runs
    COLLECTING = "collecting"  # committing leftovers, bringing the branch back, writing the patch
    SUCCEEDED = "succeeded"  # the agent exited 0 and the results were collected
    FAILED = "failed"  # the agent or the infrastructure failed; results collected when possible
    CANCELLED = "cancelled"  # the user cancelled; session kept, sandbox gone
    TIMED_OUT = "timed_out"  # ran past its timeout; session kept, sandbox gone
    STOPPED = "stopped"  # the user stopped it; session kept, resumable
    INTERRUPTED = "interrupted"  # the hal process running it died; resumable


ACTIVE = frozenset(
    {
        TaskStatus.QUEUED,
        TaskStatus.PROVISIONING,
        TaskStatus.PREPARING,
        TaskStatus.RUNNING,
        TaskStatus.COLLECTING,
    }
)
FINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
)
RESUMABLE = frozenset(
    {
        TaskStatus.STOPPED,
        TaskStatus.INTERRUPTED,
        TaskStatus.FAILED,
        TaskStatus.SUCCEEDED,
        TaskStatus.TIMED_OUT,
        TaskStatus.CANCELLED,
    }
)

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
