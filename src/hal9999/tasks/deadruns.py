"""The sandboxes of runs killed after their final status, swept by the next hal command.

A run writes its final status (its record still naming its runner and its sandbox), then
destroys its sandbox, then clears both. Killed in between (``kill -9``, the OOM killer), it
left the sandbox (its state directory, a keeper, a uid) with nothing but the next ``hal
serve``'s sweep of orphans to remove it; an in-process user may never start one. Every
``hal task list`` (and each in-process ``hal run``, before its own) now sweeps them: a task
in a final state whose record names a sandbox and whose runner is no live hal process. The
credential files the run's end had still to take out of its session go too; a daemon's
pooled run, whose final status leaves nothing on its record to find it by, has them taken
out by the next daemon's start (:func:`take_out_credentials`).

Never a live run's: the runner's pid stays on the record until its sandbox is gone, and a
sweeper first claims the task's ``runner_pid`` (a compare-and-set from the dead pid to its
own), so of two sweepers, or a sweeper and a resume, one goes on. Never a pool's: a sandbox
the ``sandboxes`` table records is a warm pool's, its daemon's to reset or destroy. Never an
interrupted task's (its sandbox may hold an agent to adopt). The provider's own ``destroy``
removes the directory, which follows no link the agent made (it is the destroy every run's
end calls).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from hal9999.errors import HalError
from hal9999.tasks.alive import runner_alive
from hal9999.tasks.state import FINAL_VALUES, RESTING

if TYPE_CHECKING:
    from hal9999.store import Store
    from hal9999.tasks.service import TaskService

logger = logging.getLogger(__name__)


def owed(store: Store) -> list[tuple[str, str, str, int | None, int | None]]:
    """The final tasks whose record names a sandbox and whose runner is dead."""
    held = store.held_by_tasks(FINAL_VALUES)
    return [row for row in held if not runner_alive(row[3], row[4])]


async def sweep(service: TaskService) -> list[str]:
    """Destroy the sandboxes of :func:`owed` tasks that no pool records; ``provider:id`` of
    each destroyed. Errors are logged, never raised: the command that sweeps goes on."""
    from hal9999.tasks.plugins import load_provider_for

    store = service.store
    rows = owed(store)
    if not rows:
        return []
    pooled = {(row.provider, row.id) for row in store.list_sandboxes()}
    me, swept = os.getpid(), []
    for task_id, provider_name, sandbox_id, runner, _started in rows:
        if await asyncio.to_thread(store.swap_runner, task_id, runner, me) is None:
            continue  # another sweeper, or a resume, took it first
        if (provider_name, sandbox_id) in pooled:  # its daemon's: only the record's link goes
            await asyncio.to_thread(
                store.update_task, task_id, held_by=me, runner_pid=None, sandbox_id=None
            )
            continue
        try:
            provider = load_provider_for(service.config, provider_name)
            await provider.destroy(sandbox_id)
        except (HalError, OSError) as exc:
            text = exc.one_line() if isinstance(exc, HalError) else str(exc)
            logger.warning("cannot destroy sandbox %s:%s of task %s, left by a killed run: %s",
                           provider_name, sandbox_id, task_id, text)  # fmt: skip
            await asyncio.to_thread(store.swap_runner, task_id, me, None)
            continue
        try:
            await asyncio.to_thread(_remove_credentials, service, task_id)
        except (HalError, OSError) as exc:
            logger.warning("credential files of task %s not removed: %s", task_id, exc)
        await asyncio.to_thread(
            store.update_task, task_id, held_by=me, runner_pid=None, sandbox_id=None
        )
        logger.info("destroyed sandbox %s:%s, left by task %s's killed run",
                    provider_name, sandbox_id, task_id)  # fmt: skip
        swept.append(f"{provider_name}:{sandbox_id}")
    return swept


async def take_out_credentials(service: TaskService, task_ids: Iterable[str]) -> list[str]:
    """At a daemon's start: the credential files its killed predecessor's runs had still to
    take out of their sessions (a pooled run's final status clears its record's runner and
    sandbox, so nothing above finds it; a run in flight becomes ``interrupted``). Of each of
    ``task_ids`` (the tasks the pool's rows named, those recovery interrupted) that is at
    rest with no runner, claimed first (:meth:`Store.swap_runner`), so never a run's that a
    resume started meanwhile (it installs them again). Errors are logged, never raised; the
    ids whose session was swept are returned."""
    if not service.config.credentials:
        return []
    me, swept = os.getpid(), []
    for task_id in sorted(set(task_ids)):
        try:
            task = await asyncio.to_thread(service.store.get_task, task_id)
        except HalError:
            continue  # removed meanwhile
        if task.status not in RESTING or task.runner_pid is not None:
            continue  # adopted, queued again, or a live run's (it removes its own)
        if await asyncio.to_thread(service.store.swap_runner, task_id, None, me) is None:
            continue  # a resume took it first
        try:
            await asyncio.to_thread(_remove_credentials, service, task_id)
            swept.append(task_id)
        except (HalError, OSError) as exc:
            logger.warning("credential files of task %s not removed: %s", task_id, exc)
        finally:
            await asyncio.to_thread(service.store.swap_runner, task_id, me, None)
    return swept


def _remove_credentials(service: TaskService, task_id: str) -> None:
    """The credential files the killed run's end had still to take out of its session (it
    dies before that as well as before the destroy)."""
    if not service.config.credentials:
        return
    from hal9999.credentials import remove_files
    from hal9999.tasks.session import HOME_TARGET

    session = service.session(service.store.get_task(task_id))
    left = remove_files(session.home, service.config.credentials, HOME_TARGET)
    if left:
        logger.warning("credential files left in the session of task %s (not regular files):"
                       " %s", task_id, ", ".join(left))  # fmt: skip
