"""The daemon's queue: start queued tasks within the limits, retry what failed for no fault
of the agent, and reap what got stuck.

Order is priority (higher first), then age. A task names its providers in priority order;
it is placed on the first whose running count is under its limit (so the first fills up
and the rest take the overflow). Secrets given with a request (``--env KEY=VALUE`` and the
values of forwarded names) are held in memory only, for as long as the task is queued or
running; a daemon restart drops them, as it should, and a task that needs one then fails
once, saying which and how to give it again (``TaskService.fail_unstarted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hal9999.errors import HalError, InternalError
from hal9999.pool.settings import SchedulerSettings
from hal9999.store import TaskRecord
from hal9999.tasks.alive import runner_alive
from hal9999.tasks.claim import claim
from hal9999.tasks.context import Adopted
from hal9999.tasks.retry import Retry
from hal9999.tasks.service import TaskService
from hal9999.tasks.state import TaskStatus

logger = logging.getLogger(__name__)

STUCK_STATES = (TaskStatus.PROVISIONING, TaskStatus.PREPARING, TaskStatus.COLLECTING)
"""States a task passes through; one that stays in them past the deadline is reaped."""


@dataclass
class Submission:
    """What the scheduler keeps in memory for one queued task."""

    env: dict[str, str] = field(default_factory=dict)
    prompt: str | None = None
    keys: dict[str, str] = field(default_factory=dict)
    """The caller's upstream keys (:attr:`RunRequest.upstream_keys`): the gateway's only."""
    forge: dict[str, str] = field(default_factory=dict)
    """The caller's forge tokens (:attr:`RunRequest.forge_tokens`): host git's only."""


class Scheduler:
    """Starts queued tasks up to the global and per-provider limits."""

    def __init__(
        self,
        service: TaskService,
        settings: SchedulerSettings,
        provider_limit: Callable[[str], int],
    ) -> None:
        self.service = service
        self.store = service.store
        self.settings = settings
        self.provider_limit = provider_limit
        self.running: dict[str, asyncio.Task[None]] = {}
        """Task id -> the coroutine running it in this process."""
        self.placed: dict[str, str] = {}
        """Task id -> the provider it runs on."""
        self._per_provider: Counter[str] = Counter()
        """Provider -> how many of :attr:`placed` run on it (kept with it: counting
        :attr:`placed` at every placement grew with the fleet)."""
        self.submissions: dict[str, Submission] = {}
        self.unrecorded: dict[str, HalError] = {}
        """Task id -> why a run of this process ended that could not record its end (the
        disk holding the store full): told to the task's followers, who else wait on a
        task that stays active for as long as this process lives."""
        self.started = 0
        self.finished = 0
        self.dispatches = 0
        """How many times :meth:`dispatch` read the queue (for the benchmarks)."""
        self.rows_read = 0
        """Queued rows those reads returned."""
        self._wake = asyncio.Event()
        self._stopping = False

    # -- intake ------------------------------------------------------------------------
    def submit(
        self,
        task_id: str,
        env: Mapping[str, str] | None = None,
        prompt: str | None = None,
        keys: Mapping[str, str] | None = None,
        forge: Mapping[str, str] | None = None,
    ) -> None:
        """Note a newly queued task (and its in-memory secrets) and wake the loop."""
        self.hold(task_id, env, prompt, keys, forge)
        self.wake()

    def hold(
        self,
        task_id: str,
        env: Mapping[str, str] | None = None,
        prompt: str | None = None,
        keys: Mapping[str, str] | None = None,
        forge: Mapping[str, str] | None = None,
    ) -> None:
        """Note what a task is to run with before it is queued, from any thread (a dict
        write, no wake): a dispatch woken by another task's end may start it between its
        row's write and :meth:`submit`, and must not start it without its env."""
        self.submissions[task_id] = Submission(
            dict(env or {}), prompt, dict(keys or {}), dict(forge or {})
        )

    def wake(self) -> None:
        """Look at the queue again soon."""
        self._wake.set()

    def on_provider(self, provider: str) -> int:
        """How many tasks run on ``provider`` in this process."""
        return self._per_provider[provider]

    # -- the loop ----------------------------------------------------------------------
    async def run_forever(self) -> None:
        """Dispatch whenever woken, or when the earliest retry falls due."""
        while not self._stopping:
            self._wake.clear()
            self.dispatch()
            due = self.store.next_not_before()
            wait = None if due is None else max(0.01, due - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            # Tasks that end together wake the loop one by one; one more turn of the event
            # loop lets them all be seen by a single dispatch instead of one each.
            await asyncio.sleep(0)

    def dispatch(self) -> int:
        """Start as many queued tasks as the limits allow; returns how many started.

        Reads only as many queued rows as there are free slots. Only when some of them
        cannot start (a run that has not yet moved its task out of ``queued``, or providers
        that are full) is a page twice as long read, up to ``max(64, 4 x free)`` rows: each
        row is still judged once, in queue order, so the result is that of one long read."""
        free = self.settings.max_concurrent - len(self.running)
        if free <= 0 or self._stopping:
            return 0
        self.dispatches += 1
        started = 0
        judged: set[str] = set()
        limit, most = free, max(64, free * 4)
        now = time.time()
        while True:
            page = self.store.queued_tasks(now, limit=limit)
            self.rows_read += len(page)
            for task in page:
                if task.id in judged:
                    continue
                judged.add(task.id)
                if task.id in self.running or self.held_elsewhere(task):
                    continue
                provider = self.place(task)
                if provider is None:
                    continue
                self.start(task, provider)
                started += 1
                if started == free:
                    return started
            if len(page) < limit or limit >= most:
                return started  # the queue (or the window) holds nothing more to start
            limit = min(limit * 2, most)

    @staticmethod
    def held_elsewhere(task: TaskRecord) -> bool:
        """Whether another live hal process holds the queued ``task`` (an in-process ``hal
        run`` or ``hal task resume`` that queued it and is about to run it): not this
        daemon's to start (its run's claim would step aside anyway, :mod:`.claim`)."""
        pid = task.runner_pid
        return pid is not None and pid != os.getpid() and runner_alive(pid, task.runner_started)

    def place(self, task: TaskRecord) -> str | None:
        """The first of the task's providers with room, or None."""
        for name in task.providers or [task.provider]:
            if self.on_provider(name) < self.provider_limit(name):
                return name
        return None

    def _place(self, task_id: str, provider: str) -> None:
        previous = self.placed.get(task_id)
        if previous is not None:
            self._per_provider[previous] -= 1
        self.placed[task_id] = provider
        self._per_provider[provider] += 1

    def start(self, task: TaskRecord, provider: str) -> None:
        """Run ``task`` on ``provider`` in the background (a provider other than the task's
        own is written to its record there, in a thread, before the run reads it)."""
        moved = provider if provider != task.provider else None
        self._place(task.id, provider)
        self.started += 1
        self.running[task.id] = asyncio.create_task(
            self._run(task.id, provider=moved), name=f"task-{task.id}"
        )

    def carry_on(self, task: TaskRecord, adopted: Adopted) -> None:
        """Follow an adopted run to its end in the background (it counts against the limits)."""
        self._place(task.id, task.provider)
        self.running[task.id] = asyncio.create_task(
            self._run(task.id, adopted), name=f"adopted-{task.id}"
        )

    async def _run(
        self, task_id: str, adopted: Adopted | None = None, *, provider: str | None = None
    ) -> None:
        submission = self.submissions.get(task_id, Submission())
        self.unrecorded.pop(task_id, None)
        try:
            if provider is not None:  # off the loop: another process may hold the write lock
                await asyncio.to_thread(self.move, task_id, provider)
            record = await self.service.run(
                task_id,
                given_env=submission.env,
                upstream_keys=submission.keys,
                forge_tokens=submission.forge,
                prompt=submission.prompt,
                adopted=adopted,
                retry=self.retry,
            )
            # A failure this daemon retries was queued again by the run's own end (one
            # write: a kill at any moment leaves no retry owed by a `failed` task); its
            # secrets are kept for that next run.
            if record.status != TaskStatus.QUEUED:
                self.submissions.pop(task_id, None)
        except HalError as exc:
            logger.warning("task %s: %s", task_id, exc.one_line())
            self.unrecorded[task_id] = exc
            self.submissions.pop(task_id, None)
            # A run that failed before its task left `queued` (a value given with --env that
            # a restart dropped, an agent or provider gone from the config since): recorded,
            # or the wake below starts it again at once, thousands of times a second.
            with contextlib.suppress(HalError):
                await asyncio.to_thread(self.service.fail_unstarted, task_id, exc)
        except Exception as exc:
            logger.exception("task %s: the runner failed", task_id)
            self.unrecorded[task_id] = InternalError(
                f"the run of task {task_id} failed ({type(exc).__name__})",
                hint="this is a bug in hal: the traceback is in the daemon's log",
            )
            self.submissions.pop(task_id, None)
        finally:
            self.running.pop(task_id, None)
            gone = self.placed.pop(task_id, None)
            if gone is not None:
                self._per_provider[gone] -= 1
            self.finished += 1
            self.wake()

    def move(self, task_id: str, provider: str) -> None:
        """Record the provider the task was placed on, once this daemon claimed it (a task
        another live hal process runs gets no write from here, not even this one)."""
        claim(self.store, task_id)
        self.store.update_task(task_id, provider=provider)

    # -- retries -----------------------------------------------------------------------
    def retry(self, task: TaskRecord) -> Retry | None:
        """The retry a run of this daemon gets when it ends as ``task`` (``failed``, with
        its error code), or None; the run's end records it (``RunContext.retry``).

        Also while the daemon stops: the task is then left queued, and the next ``hal
        serve`` runs it after its backoff, as every task queued at a stop (a stop loses no
        more than a ``kill -9`` would, which leaves it queued too)."""
        return Retry.planned(task, self.settings)

    # -- control -----------------------------------------------------------------------
    async def cancel(self, task_id: str, *, stop: bool = False) -> TaskRecord:
        """Cancel (or stop) a queued or running task; a running one leaves at once."""
        task = self.service.find(task_id)
        self.submissions.pop(task.id, None)
        if stop:
            return await self.service.stop(task.id)
        return await self.service.cancel(task.id)

    async def reap_stuck(self, now: float | None = None) -> list[str]:
        """Interrupt tasks stuck in a passing state past the deadline; their ids."""
        now = time.time() if now is None else now
        reaped = []
        for task in self.store.list_tasks(status=[s.value for s in STUCK_STATES]):
            since = self.store.last_event_ts(task.id, "phase") or task.created_at
            if now - since <= self.settings.stuck_after_s:
                continue
            reason = (
                f"reaped: stuck in {task.status} for {now - since:.0f}s "
                f"(limit {self.settings.stuck_after_s:g}s)"
            )
            with contextlib.suppress(HalError):
                await self.service.halt(task.id, TaskStatus.INTERRUPTED, reason)
                reaped.append(task.id)
            runner = self.running.get(task.id)
            if runner is not None:
                runner.cancel()
        return reaped

    async def shutdown(self) -> None:
        """Stop starting tasks; leave running agents to be adopted by the next daemon."""
        self._stopping = True
        self.wake()
        for task_id, runner in list(self.running.items()):
            self.service.detach(task_id)
            runner.cancel()
        if self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)
