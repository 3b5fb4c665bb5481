"""An agent's log and event files, bounded across its turns.

Each turn is one run of the agent's long-lived task, and the per-run caps of its output
(``HAL_LOG_CAP_MB``, the ``output`` events' cap) hold per run: turn after turn they add up
(with ``remind(in_s=1)`` an agent wakes itself). Before a turn starts, when the task's
``agent.log`` and ``events.jsonl`` together hold more than half of ``[hive] agent_files_mb``,
both are rotated (:mod:`hal9999.events.rotation`): each becomes ``.1``, the older ``.1``
dropped. The parsed-events files of finished runs go too (only a run being adopted reads
its own). So at a turn's start the files hold at most the cap, and a turn adds one run's
worth; while a run goes on they count against its sandbox's ``disk_mb``
(:class:`hal9999.providers.limits.DiskWatchdog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hal9999.errors import HalError
from hal9999.events.models import Message, Output
from hal9999.events.rotation import rotate_events, rotate_log, size_of
from hal9999.tasks.service import TaskService

logger = logging.getLogger(__name__)


def rotate_if_due(service: TaskService, task_id: str, cap_mb: int) -> bool:
    """Rotate the files of the agent's resting task ``task_id`` when they hold more than
    half of ``cap_mb`` MiB; whether they were."""
    record = service.store.get_task(task_id)
    session = service.session(record)
    for parsed in session.run_dir.glob("parsed-*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            parsed.unlink()
    held = size_of(session.log) + size_of(session.events)
    # A writer of this process holding the file would go on appending to the rotated one.
    if held <= (cap_mb << 20) // 2 or service.writers.is_open(task_id):
        return False
    rotate_log(session.log)
    rotate_events(session.events)
    with service.events(record) as log:
        # The new log starts at 0: a runner that adopts the next run reads it from there.
        log.emit(Output(text="", log_end=0))
        log.emit(Message(text=(
            f"the agent's log and events passed half of [hive] agent_files_mb ({cap_mb} MiB): "
            "they were rotated to agent.log.1 and events.jsonl.1, the older ones dropped"
        )))  # fmt: skip
    return True


async def bound_files(service: TaskService, task_id: str, cap_mb: int) -> None:
    """:func:`rotate_if_due` in a worker thread; a failure is logged, and the turn runs all
    the same."""
    try:
        await asyncio.to_thread(rotate_if_due, service, task_id, cap_mb)
    except (OSError, HalError):
        logger.exception("hive: cannot rotate the files of task %s", task_id)
