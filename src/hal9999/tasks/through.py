"""Following a task to its end for a caller of a task API that runs it elsewhere (the
daemon's scheduler): one loop for the daemon client and the daemon's own API. Light at
import: the daemon client uses it."""

from __future__ import annotations

import contextlib

from hal9999.errors import HalError
from hal9999.events.own import HAL_OWN

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from hal9999.store import TaskRecord
    from hal9999.tasks.api import OnEvent, OnOutput, TaskAPI


async def see_through(
    api: TaskAPI,
    task_id: str,
    on_output: OnOutput | None,
    on_event: OnEvent | None,
    *,
    after_seq: int = 0,
) -> TaskRecord:
    """Follow the task to its end, handing its output to ``on_output`` and the agent's own
    events to ``on_event``; returns its record then. Cancelling the caller (Ctrl-C, SIGTERM)
    cancels the task, as a run in this process would be."""
    import asyncio

    from hal9999.events.models import Output

    try:
        async for event in api.follow(task_id, after_seq=after_seq):
            if on_output is not None and isinstance(event, Output):
                on_output(event.text)
            if on_event is not None and event.type not in HAL_OWN:
                on_event(event)
    except asyncio.CancelledError:
        with contextlib.suppress(HalError):
            await api.cancel(task_id)
        raise
    return await api.get(task_id)
