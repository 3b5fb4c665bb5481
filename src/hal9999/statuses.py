"""The states of a task and the sets of them that every layer asks about (the gateway which
grants to withdraw, the store which rows are final); the moves between them are
:mod:`hal9999.tasks.state`'s."""

from __future__ import annotations

from enum import StrEnum


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

FINAL_VALUES = tuple(sorted(state.value for state in FINAL))
""":data:`FINAL` as names, in one order (for SQL)."""
RESTING = FINAL | {TaskStatus.STOPPED, TaskStatus.INTERRUPTED}
"""States a task stays in until someone acts; reaching one is committed durably (fsync)."""
