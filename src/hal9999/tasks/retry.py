"""When a failed run is tried again, and what a retry writes.

The daemon's scheduler and an in-process ``hal run`` share the policy (:func:`retry_plan`,
:func:`backoff`). They differ in how it is recorded: the daemon hands its policy to the run
(``RunContext.retry``), whose end then writes ``queued`` with the retry's fields in the
same statement that would have written ``failed`` (``transition(..., via=FAILED)``), so a
daemon killed at any moment leaves the task either in flight (recovery's business) or
queued for its retry, never ``failed`` with a retry owed; an in-process run, whose client
waits out the backoff itself, writes ``failed`` and then ``failed -> queued``
(:func:`requeue`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hal9999.errors import HalError
from hal9999.pool.settings import SchedulerSettings
from hal9999.store import TaskRecord
from hal9999.tasks.state import TaskStatus, transition

if TYPE_CHECKING:
    from hal9999.tasks.service import TaskService

TRANSIENT_CODES = frozenset(
    {"provider_error", "sandbox_not_found", "exec_failed", "process_error", "hal_error"}
)
"""Error codes of infrastructure failures, which are retried with backoff. Configuration
problems (unknown or missing provider, missing capability) are not: they would fail again."""


def backoff(
    attempt: int, settings: SchedulerSettings, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number ``attempt`` (from 1): capped exponential, equal jitter."""
    ceiling: float = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


def retry_plan(task: TaskRecord, settings: SchedulerSettings) -> tuple[int, dict[str, int]] | None:
    """Whether a failed run is worth another: the attempt number and the counter to record.

    Infrastructure failures are retried up to ``max_infra_retries``; an agent failure up
    to the task's own ``--retries``; anything else never (it would fail again).
    """
    if task.status != TaskStatus.FAILED:
        return None
    if task.error_code in TRANSIENT_CODES:
        if task.infra_retries >= settings.max_infra_retries:
            return None
        return task.infra_retries + 1, {"infra_retries": task.infra_retries + 1}
    if task.error_code == "agent_failed" and task.agent_retries < task.retries:
        return task.agent_retries + 1, {"agent_retries": task.agent_retries + 1}
    return None


@dataclass(frozen=True)
class Retry:
    """One more run of a failed task: which attempt, the counter it spends, after how long."""

    attempt: int
    counters: dict[str, int]
    """The retry counter to record (``infra_retries`` or ``agent_retries``), its new value."""
    delay: float
    """Seconds before the retry may start (its ``not_before``)."""

    @classmethod
    def planned(cls, task: TaskRecord, settings: SchedulerSettings) -> Retry | None:
        """The retry ``settings`` give ``task`` (as it ended, ``failed``), or None."""
        plan = retry_plan(task, settings)
        if plan is None:
            return None
        attempt, counters = plan
        return cls(attempt, counters, backoff(attempt, settings))

    def detail(self, why: str | None) -> str:
        """The ``queued`` phase event's detail: which retry, when, and why."""
        return f"retry {self.attempt} in {self.delay:.1f}s: {why}"

    def fields(self, now: float) -> dict[str, Any]:
        """What the move to ``queued`` writes: this process holds the task (a queued task
        that names no live runner is taken for one whose runner died), it waits out the
        delay, and the failure's outcome is cleared for the next run."""
        return {
            "runner_pid": os.getpid(),
            "not_before": now + self.delay,
            "exit_code": None,
            "error_code": None,
            "error_message": None,
            "finished_at": None,
            **self.counters,
        }


RetryPolicy = Callable[[TaskRecord], Retry | None]
"""Given a run's task as it would end (``failed``, with its error code), the retry it gets."""


def requeue(service: TaskService, task: TaskRecord, retry: Retry) -> bool:
    """Move a task whose run ended ``failed`` back to ``queued`` for ``retry`` (an
    in-process run's way; the daemon's runs are queued again by their own end); False
    when it moved on meanwhile (resumed, removed, cancelled)."""
    with service.events(task) as events:
        try:
            transition(
                service.store,
                events,
                task.id,
                TaskStatus.QUEUED,
                expect=TaskStatus.FAILED,
                detail=retry.detail(task.error_message or task.error_code),
                **retry.fields(time.time()),
            )
        except HalError:
            return False
    return True
