"""The one task API every surface calls (the CLI today; the MCP server and the dashboard
next), with two implementations: :class:`LocalTaskAPI` works in this process (and in the
detached ``hal`` processes it starts), ``DaemonTaskAPI`` (:mod:`hal9999.server.client`) asks
a running ``hal serve``. A command picks one and has a single code path; a task behaves the
same either way: the request carries the caller's resolved settings, retries happen in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from hal9999.events.models import Event
from hal9999.events.reader import follow_events
from hal9999.pool.settings import SchedulerSettings, scheduler_settings
from hal9999.store import TaskRecord
from hal9999.tasks.context import Adopted
from hal9999.tasks.request import run_request
from hal9999.tasks.service import TaskService
from hal9999.tasks.state import ACTIVE, FINAL_VALUES, TaskStatus

OnStart = Callable[[TaskRecord], None]
"""Told the task once it exists (or, on resume, once it is queued or adopted)."""
OnOutput = Callable[[str], None]
"""Gets the agent's output (secrets masked) as it arrives."""
OnEvent = Callable[[Event], None]
"""Gets each event the run records (rendered for a person, or printed as JSON)."""
Spawn = Callable[[TaskRecord, list[str], dict[str, str]], int]
"""Starts a detached ``hal task _run ID ARGS...`` with extra environment; returns its pid."""


class TaskAPI(Protocol):
    """Create, inspect, control and follow tasks."""

    async def create(self, request: Mapping[str, Any]) -> TaskRecord:
        """Create the task and start it in the background; returns it queued."""
        ...

    async def run(
        self,
        request: Mapping[str, Any],
        *,
        on_start: OnStart | None = None,
        on_output: OnOutput | None = None,
        on_event: OnEvent | None = None,
    ) -> TaskRecord:
        """Create the task and see it to its end (retries included); returns the outcome.
        Cancelling the caller (Ctrl-C) cancels the task."""
        ...

    async def get(self, task_id: str) -> TaskRecord:
        """One task by id or unique prefix."""
        ...

    async def list(
        self, *, status: list[str] | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Tasks, newest first."""
        ...

    async def stop(self, task_id: str) -> TaskRecord:
        """Stop a task (its session stays; it can be resumed)."""
        ...

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task for good."""
        ...

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
    ) -> TaskRecord:
        """Run a resting task again (or carry on its live agent); with ``detach``, return
        once it is queued, else at its end."""
        ...

    async def remove(self, task_id: str, *, force: bool = False) -> TaskRecord:
        """Delete a task and its session."""
        ...

    def follow(self, task_id: str, *, after_seq: int = 0) -> AsyncIterator[Event]:
        """The task's events above ``after_seq``, then new ones until the task is over."""
        ...


class LocalTaskAPI:
    """Tasks run by this process, or by detached ``hal`` processes it spawns."""

    def __init__(
        self,
        service: TaskService,
        spawn: Spawn,
        settings: SchedulerSettings | None = None,
    ) -> None:
        self.service = service
        self.spawn = spawn
        self.settings = settings or scheduler_settings(service.config, service.environ)
        """Backoff and infrastructure-retry limits, as the daemon's scheduler has them."""

    async def create(self, request: Mapping[str, Any]) -> TaskRecord:
        """Create the task and start a detached runner for it (the task is this process's
        until the runner's pid is recorded, so no daemon starts it meanwhile)."""
        req = run_request(request, self.service.config)
        await self.sweep_dead_runs()
        req.runner_pid = os.getpid()
        task = await self.service.create(req)
        self.spawn(task, [], dict(req.given_env))
        return self.service.store.get_task(task.id)

    async def run(
        self,
        request: Mapping[str, Any],
        *,
        on_start: OnStart | None = None,
        on_output: OnOutput | None = None,
        on_event: OnEvent | None = None,
    ) -> TaskRecord:
        """Create the task and run it here, to its end. It is created as this process's
        (``runner_pid``): a daemon on the same home never starts a queued task whose runner
        lives, so the two cannot both take it from ``queued``."""
        req = run_request(request, self.service.config)
        await self.sweep_dead_runs()
        req.runner_pid = os.getpid()
        task = await self.service.create(req)
        if on_start is not None:
            on_start(task)
        return await self._run(task.id, req.given_env, None, on_output, on_event)

    async def _run(
        self,
        task_id: str,
        env: Mapping[str, str],
        prompt: str | None,
        on_output: OnOutput | None,
        on_event: OnEvent | None,
        adopted: Adopted | None = None,
    ) -> TaskRecord:
        """Run, and run again while a failure is worth retrying (as the scheduler does)."""
        record = await self.service.run(
            task_id,
            given_env=env,
            prompt=prompt,
            on_output=on_output,
            on_event=on_event,
            adopted=adopted,
        )
        while record.status == TaskStatus.FAILED:  # only a failure is retried
            # A run that succeeds does not import the retry policy.
            from hal9999.tasks.retry import Retry, requeue

            retry = Retry.planned(record, self.settings)
            if retry is None or not requeue(self.service, record, retry):
                break
            await asyncio.sleep(retry.delay)
            record = await self.service.run(
                task_id, given_env=env, prompt=prompt, on_output=on_output, on_event=on_event
            )
        return record

    async def get(self, task_id: str) -> TaskRecord:
        """One task, with a dead runner noticed."""
        return self.service.find(task_id)

    async def list(
        self, *, status: list[str] | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Tasks, newest first (the sandboxes of runs killed after their end swept first)."""
        await self.sweep_dead_runs()
        return self.service.list(status=status, limit=limit)

    async def sweep_dead_runs(self) -> None:
        """Destroy what runs killed after their final status left (tasks/deadruns.py): one
        indexed query when there is nothing, and no import."""
        if self.service.store.held_by_tasks(FINAL_VALUES):
            from hal9999.tasks import deadruns

            await deadruns.sweep(self.service)

    async def stop(self, task_id: str) -> TaskRecord:
        """Stop a task wherever it runs (its runner notices)."""
        return await self.service.stop(task_id)

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task wherever it runs."""
        return await self.service.cancel(task_id)

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
    ) -> TaskRecord:
        """Queue the task again (or adopt its live agent) and run it here or detached."""
        from hal9999.tasks.recovery import resume as resume_task

        given = dict(env or {})

        def new_run(task: TaskRecord) -> None:
            # The variables the run will read from this shell: refused before the task is
            # queued for a run that could not start (a later daemon would run it without
            # them). An adopted agent has its own already: none is asked for then.
            self.service.require_resume_env(task, task.env_keys, given, daemon=False)

        task_id = self.service.find(task_id).id
        record, adopted = await resume_task(
            self.service, task_id, prompt=prompt, env=given, new_run=new_run
        )
        if detach:
            args = ["--adopt"] if adopted else [prompt] if prompt else []
            self.spawn(record, args, given)
            return record
        if on_start is not None:
            on_start(record)
        return await self._run(task_id, given, prompt, on_output, on_event, adopted)

    async def remove(self, task_id: str, *, force: bool = False) -> TaskRecord:
        """Delete a task and its session."""
        return await self.service.remove(task_id, force=force)

    async def follow(self, task_id: str, *, after_seq: int = 0) -> AsyncIterator[Event]:
        """The task's events from its file (written by whichever process runs it)."""
        task = self.service.find(task_id)
        over = False

        async def watch() -> None:
            nonlocal over
            while not over:
                await asyncio.sleep(0.2)
                over = self.service.find(task.id).status not in ACTIVE

        watcher = asyncio.create_task(watch())
        try:
            path = self.service.session(task).events
            async for event in follow_events(path, after_seq=after_seq, stop=lambda: over):
                yield event
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


if TYPE_CHECKING:

    def _keeps_the_protocol(api: LocalTaskAPI) -> TaskAPI:
        return api  # mypy checks it (the daemon client and the daemon's own API do the same)
