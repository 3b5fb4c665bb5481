"""The task API of the process that runs the tasks itself (``hal serve``): every HTTP
route, the MCP server, the hive's turn loop and the dashboard call it, and none of them
the scheduler or the store. It keeps :class:`hal9999.tasks.api.TaskAPI`'s protocol, as
:class:`~hal9999.tasks.api.LocalTaskAPI` and the daemon client do; what it adds (pages of
events, the queue's length, a shown patch) serves the daemon's own surfaces."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hal9999.events.models import Event
from hal9999.store import Store, TaskRecord
from hal9999.tasks.pages import PAGE, events_page, follow_page
from hal9999.tasks.request import RunRequest, run_request
from hal9999.tasks.state import TaskStatus
from hal9999.tasks.through import see_through

if TYPE_CHECKING:
    from hal9999.events.bus import EventBus
    from hal9999.providers.base import Sandbox
    from hal9999.tasks.api import OnEvent, OnOutput, OnStart
    from hal9999.tasks.scheduler import Scheduler
    from hal9999.tasks.service import TaskService

TakeSandbox = Callable[[TaskRecord], Awaitable["Sandbox | None"]]
"""Takes over a resting task's live sandbox (the daemon leases it into its pool)."""
FOLLOW_WAIT_S = 30.0
"""How long one page of :meth:`ServedTaskAPI.follow` waits for new events."""


@dataclass(eq=False)
class ServedTaskAPI:
    """Tasks run by this process's scheduler: created off the event loop (the store's write
    lock may be held elsewhere), then queued; stopped, resumed and removed through it."""

    service: TaskService
    scheduler: Scheduler
    bus: EventBus
    take_sandbox: TakeSandbox | None = None
    """How a resume adopts a live agent's sandbox (None: the provider's own handle)."""

    @property
    def store(self) -> Store:
        """The service's store (read by the pages of events)."""
        return self.service.store

    async def create(
        self,
        request: Mapping[str, Any] | RunRequest,
        *,
        named: Callable[[str], None] | None = None,
    ) -> TaskRecord:
        """Create the task as this process's (no window for another's claim) and queue it
        with its in-memory secrets; ``named`` is told its id before its row exists. A wire
        request (the HTTP route's body) is validated here, once, with this daemon's config
        for the defaults; a :class:`RunRequest` the daemon built itself (a hive turn, an MCP
        sub-task) was validated when it was built."""
        if not isinstance(request, RunRequest):
            request = run_request(request, self.service.config)
        mine = request.model_copy(update={"runner_pid": os.getpid()})
        env, keys, forge = request.given_env, request.upstream_keys, request.forge_tokens
        scheduler = self.scheduler

        def hold(task_id: str) -> None:
            # Its env is the scheduler's before its row is (Scheduler.hold).
            scheduler.hold(task_id, env, keys=keys, forge=forge)
            if named is not None:
                named(task_id)

        task = await asyncio.to_thread(self.service.create_blocking, mine, hold)
        scheduler.submit(task.id, env, keys=keys, forge=forge)
        return task

    async def run(
        self,
        request: Mapping[str, Any] | RunRequest,
        *,
        on_start: OnStart | None = None,
        on_output: OnOutput | None = None,
        on_event: OnEvent | None = None,
    ) -> TaskRecord:
        """Create the task and follow it to its end (the scheduler retries it); cancelling
        the caller cancels the task."""
        task = await self.create(request)
        if on_start is not None:
            on_start(task)
        return await see_through(self, task.id, on_output, on_event)

    async def get(self, task_id: str) -> TaskRecord:
        """One task by id or unique prefix, reconciled."""
        return await asyncio.to_thread(self.service.find, task_id)

    async def list(
        self, *, status: list[str] | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Tasks, newest first."""
        return await asyncio.to_thread(self.service.list, status=status, limit=limit)

    async def queued(self) -> int:
        """How many tasks wait in the queue."""
        return len(await asyncio.to_thread(self.store.list_tasks, status=["queued"]))

    async def stop(self, task_id: str) -> TaskRecord:
        """Stop a task (its run leaves at once; its session stays)."""
        return await self.scheduler.cancel(task_id, stop=True)

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task for good."""
        return await self.scheduler.cancel(task_id)

    async def resume(
        self,
        task_id: str,
        *,
        prompt: str | None = None,
        env: Mapping[str, str] | None = None,
        detach: bool = False,
        on_start: OnStart | None = None,
        on_output: OnOutput | None = None,
        on_event: OnEvent | None = None,
        upstream_keys: Mapping[str, str] | None = None,
    ) -> TaskRecord:
        """Queue a resting task again, or adopt its live agent (a runner that died); with
        ``detach`` return then (a route answers at once), else at its end.
        ``upstream_keys`` are the caller's API keys for the run's gateway."""
        from hal9999.tasks.recovery import resume as resume_task

        given, keys, scheduler = dict(env or {}), dict(upstream_keys or {}), self.scheduler
        seen = 0  # a follower is shown the new run only, not the earlier runs' events again
        if not detach:
            seen = await asyncio.to_thread(self.store.last_seq, (await self.get(task_id)).id)
        task, adopted = await resume_task(
            self.service, task_id, prompt=prompt, env=given, take_sandbox=self.take_sandbox,
            named=lambda name: scheduler.hold(name, given, prompt, keys),  # before it is queued
        )  # fmt: skip
        # Queued or adopted, the task names this process as its runner already.
        if adopted is not None:
            scheduler.hold(task.id, keys=keys)  # the adopted run's gateway key
            scheduler.carry_on(task, adopted)
        else:
            scheduler.submit(task.id, given, prompt, keys)
        if detach:
            return task
        if on_start is not None:
            on_start(task)
        return await see_through(self, task.id, on_output, on_event, after_seq=seen)

    async def remove(self, task_id: str, *, force: bool = False) -> TaskRecord:
        """Delete a task and its session."""
        task = await self.service.remove(task_id, force=force)
        self.scheduler.submissions.pop(task.id, None)
        return task

    async def halt(self, task_id: str, status: TaskStatus, reason: str) -> TaskRecord:
        """Move a task to a resting ``status`` for ``reason`` (an orphaned turn's run)."""
        return await self.service.halt(task_id, status, reason)

    def submit(self, task_id: str) -> None:
        """Queue a task already ``queued`` in the store with this process's scheduler (a
        turn a stopped daemon left, whose run no submission names)."""
        self.scheduler.submit(task_id)

    def running(self, task_id: str) -> bool:
        """Whether this process runs the task now (its run may outlast its status)."""
        return task_id in self.scheduler.running

    async def page(
        self, task_id: str, *, after_seq: int, wait: float, quiet: frozenset[str] = frozenset()
    ) -> Any:
        """One page of a task's events above ``after_seq`` (``done`` once it is over); see
        :func:`hal9999.tasks.pages.follow_page`."""
        return await follow_page(self, task_id, after_seq=after_seq, wait=wait, quiet=quiet)

    async def all_events(self, *, after: int, wait: float) -> Any:
        """Every task's events with a ``gseq`` above ``after``, in commit order."""
        return await events_page(self, after=after, wait=wait)

    async def follow(self, task_id: str, *, after_seq: int = 0) -> AsyncIterator[Event]:
        """The task's events above ``after_seq``, then new ones until it is over (its
        retries included), page by page."""
        from hal9999.events.models import EVENT_ADAPTER

        while True:
            page = await self.page(task_id, after_seq=after_seq, wait=FOLLOW_WAIT_S)
            for data in page["events"]:
                event = EVENT_ADAPTER.validate_python(data)
                after_seq = max(after_seq, event.seq)
                yield event
            if page["done"] and len(page["events"]) < PAGE:
                return

    async def shown_patch(self, task: TaskRecord, text: str) -> str:
        """A patch's ``text`` masked with the task's secrets, as the dashboard shows it."""
        return await asyncio.to_thread(self.service.shown_patch, task, text)


if TYPE_CHECKING:
    from hal9999.tasks.api import TaskAPI

    def _keeps_the_protocol(api: ServedTaskAPI) -> TaskAPI:
        return api  # mypy checks it: the daemon's API is a TaskAPI as the other two are
