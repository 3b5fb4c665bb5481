"""Which hal process runs a task: the claim of its ``runner_pid``.

Two hal processes can reach a run of one task: a daemon's dispatch and an in-process ``hal
run`` or ``hal task resume``, a daemon's recovery at start and a resume adopting the same
agent. Each claims the task before it writes, makes or opens anything for the run. The
claim reads the holder, judges it (nobody, this process, the process that handed the run
over, or no live hal: a crashed runner's task is free), then sets ``runner_pid`` only if it
still holds what was read (:meth:`~hal9999.store.Store.swap_runner`); liveness cannot be
judged inside SQL, and a claim that lands between the read and the write makes the write
match no row. So of two claims exactly one wins, and the other sees the winner and steps
aside with nothing written.
"""

from __future__ import annotations

import os

from hal9999.errors import TaskStateError
from hal9999.store import Store, TaskRecord
from hal9999.tasks.alive import runner_alive

TRIES = 5
"""Reads of the holder before a claim gives up: each retry means another process set it
between the read and the write (a hand-over, a crashed runner's task claimed by two)."""


def claim(store: Store, task_id: str, *, handed_from: int | None = None) -> TaskRecord:
    """Make this process the task's runner and return the record as claimed.

    ``handed_from`` is the pid of the hal process that started this one to run the task (a
    detached runner's parent), which holds it until it records this one. Raises
    :class:`TaskStateError` naming the holder, having written nothing, when another live
    hal process holds the task."""
    me = os.getpid()
    for _ in range(TRIES):
        task = store.get_task(task_id)
        holder = task.runner_pid
        if holder == me:
            return task
        if (
            holder is not None
            and holder != handed_from
            and runner_alive(holder, task.runner_started)
        ):
            raise held_elsewhere(task_id, holder)
        claimed = store.swap_runner(task_id, holder, me)
        if claimed is not None:
            return claimed
    raise TaskStateError(
        f"task {task_id} changed hands {TRIES} times while this process claimed it",
        hint=f"see who runs it with `hal task show {task_id}`",
    )


def held_elsewhere(task_id: str, holder: int) -> TaskStateError:
    """The error of a claim that another live hal process (``holder``) won."""
    return TaskStateError(
        f"task {task_id} is being run by another hal process (pid {holder})",
        hint=f"follow it with `hal task logs -f {task_id}` or `hal task attach {task_id}`",
        holder=holder,
    )
