"""What a starting daemon does with what an earlier one (or a killed ``hal``) left behind.

Every task gets a truthful state and every sandbox an owner:

- a task whose runner is alive elsewhere (a foreground ``hal run``) is left alone;
- a queued task is queued again under this daemon;
- a running (or interrupted) task whose agent still runs in tmux, or has ended with its exit
  status recorded, is *adopted*: its log is followed from where its events stop, and it is
  collected and finished as if nothing had happened;
- any other task that was in flight is marked ``interrupted`` (resumable), and its process and
  sandbox are removed;
- a sandbox no adopted or live task holds is an orphan and is destroyed; a sandbox recorded
  in the store but gone from its provider is forgotten, with a log line saying so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hal9999.agents.registry import resolve_agent
from hal9999.errors import HalError
from hal9999.events.models import Message, Output, Phase, Usage
from hal9999.events.reader import read_events
from hal9999.pool import WarmPool
from hal9999.providers.base import Provider
from hal9999.redact import SecretMasker
from hal9999.spec import ArgvCommand
from hal9999.store import TaskRecord
from hal9999.tasks.context import Adopted, Totals, process_spec
from hal9999.tasks.plugins import load_process_manager
from hal9999.tasks.sandboxes import PoolSource
from hal9999.tasks.service import TaskService, runner_alive
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE, TaskStatus

logger = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What reconciling found and did."""

    adopted: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    orphans_destroyed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


def replay(session: Session) -> tuple[int, list[str], Totals]:
    """From the event log: the log offset events cover, the output texts and the usage of
    the current run (since its last ``running`` phase)."""
    offset, totals = 0, Totals()
    texts: list[str] = []
    for event in read_events(session.events):
        if isinstance(event, Phase) and event.phase == "running":
            texts, totals = [], Totals()
        elif isinstance(event, Usage):
            totals.add(event)
        elif isinstance(event, Output):
            texts.append(event.text)
            if event.log_end is not None:
                offset = event.log_end
    return offset, texts, totals


class Recovery:
    """Reconciles tasks and sandboxes when a daemon starts."""

    def __init__(
        self,
        service: TaskService,
        pool: WarmPool,
        source: PoolSource,
        providers: Callable[[str], Provider],
    ) -> None:
        self.service = service
        self.store = service.store
        self.pool = pool
        self.source = source
        self.providers = providers

    async def run(self) -> tuple[RecoveryReport, list[tuple[TaskRecord, Adopted]]]:
        """Reconcile everything; returns the report and the runs to carry on."""
        report = RecoveryReport()
        keep: set[tuple[str, str]] = set()
        self.elsewhere: set[str] = set()
        adoptions: list[tuple[TaskRecord, Adopted]] = []
        statuses = [s.value for s in (*ACTIVE, TaskStatus.INTERRUPTED)]
        for task in self.store.list_tasks(status=statuses):
            me = os.getpid()
            if task.runner_pid not in (None, me) and runner_alive(task.runner_pid):
                report.left_alone.append(task.id)
                self.elsewhere.add(task.id)
                if task.sandbox_id:
                    keep.add((task.provider, task.sandbox_id))
                continue
            if task.status == TaskStatus.QUEUED:
                self.store.update_task(task.id, runner_pid=me)
                report.requeued.append(task.id)
                continue
            adopted = None
            if task.status in (TaskStatus.RUNNING, TaskStatus.INTERRUPTED):
                adopted = await self.adoptable(task)
            if adopted is not None:
                keep.add((task.provider, adopted.sandbox.id))
                adoptions.append((self.mark_adopted(task), adopted))
                report.adopted.append(task.id)
            elif task.status == TaskStatus.INTERRUPTED:
                if task.sandbox_id or task.runner_pid:
                    await self.clean(task)
            else:
                await self.interrupt(task)
                report.interrupted.append(task.id)
        await self.sweep(keep, report)
        return report, adoptions

    async def adoptable(self, task: TaskRecord) -> Adopted | None:
        """How to carry on ``task``, when its agent runs or has ended and its sandbox lives."""
        if not task.sandbox_id:
            return None
        session = self.service.session(task)
        manager = load_process_manager(self.service.config, task.process_manager)
        pspec = process_spec(task, session, ArgvCommand(argv=("true",)))
        try:
            status = await manager.status(pspec)
            if status.state == "missing":
                return None
            lease = await self.pool.adopt(task.provider, task.sandbox_id, task.id)
            agent = resolve_agent(task.agent, self.service.config.agent_settings(task.agent))
        except HalError as exc:
            logger.warning("task %s cannot be adopted: %s", task.id, exc.one_line())
            return None
        self.source.adopted(lease)
        offset, texts, totals = replay(session)
        parser = agent.parser()
        for text in texts:
            parser.feed(text)  # rebuild the parser's state; its events are already recorded
        ran_for = time.time() - (task.started_at or time.time())
        return Adopted(lease.sandbox, pspec, offset, parser, time.monotonic() - ran_for, totals)

    def mark_adopted(self, task: TaskRecord) -> TaskRecord:
        """Record that this daemon now runs ``task``."""
        events = self.service.event_log(task, SecretMasker())
        if task.status == TaskStatus.INTERRUPTED:
            self.store.update_task(
                task.id, status=TaskStatus.RUNNING.value, error_code=None, error_message=None
            )
            events.emit(Phase(phase="running", previous=task.status, detail="adopted"))
        events.emit(
            Message(text=f"adopted by hal serve (pid {os.getpid()}); the agent kept running")
        )
        events.close()
        return self.store.update_task(task.id, runner_pid=os.getpid())

    async def interrupt(self, task: TaskRecord) -> None:
        """Mark an in-flight task ``interrupted`` (resumable), remove its process and sandbox."""
        reason = (
            f"the hal process running this task died while it was {task.status}; "
            f"`hal task resume {task.id}` continues it"
        )
        self.store.update_task(
            task.id,
            status=TaskStatus.INTERRUPTED.value,
            runner_pid=None,
            error_code="interrupted",
            error_message=reason,
        )
        events = self.service.event_log(task, SecretMasker())
        events.emit(Phase(phase="interrupted", previous=task.status, detail=reason))
        events.close()
        await self.clean(task)

    async def clean(self, task: TaskRecord) -> None:
        """Stop what an interrupted task left running (no agent to adopt)."""
        try:
            await self.service.kill(task)
        except HalError as exc:
            logger.warning("task %s: cleaning up failed: %s", task.id, exc.one_line())
        self.store.update_task(task.id, runner_pid=None)

    def provider_names(self) -> Iterable[str]:
        """Every provider that may hold sandboxes: state dirs, store records, tasks."""
        names = {row.provider for row in self.store.list_sandboxes()}
        state = self.service.paths.sandboxes
        if state.exists():
            names |= {p.name for p in state.iterdir() if p.is_dir()}
        return sorted(names)

    async def sweep(self, keep: set[tuple[str, str]], report: RecoveryReport) -> None:
        """Destroy orphan sandboxes; forget recorded ones that are gone."""
        live: set[tuple[str, str]] = set()
        for name in self.provider_names():
            try:
                provider = self.providers(name)
                infos = await provider.list()
            except HalError as exc:
                logger.warning("cannot list %s sandboxes: %s", name, exc.one_line())
                continue
            for info in infos:
                if (name, info.id) in keep or info.spec.labels.get("hal.task") in self.elsewhere:
                    live.add((name, info.id))
                    continue
                try:
                    await provider.destroy(info.id)
                    report.orphans_destroyed.append(f"{name}:{info.id}")
                except HalError as exc:
                    logger.warning("cannot destroy orphan %s:%s: %s", name, info.id, exc)
        for row in self.store.list_sandboxes():
            if (row.provider, row.id) in live:
                continue
            if (row.provider, row.id) not in keep:
                self.store.delete_sandbox(row.provider, row.id)
                if not any(o == f"{row.provider}:{row.id}" for o in report.orphans_destroyed):
                    report.gone.append(f"{row.provider}:{row.id}")
                    logger.info("sandbox %s:%s was recorded but is gone", row.provider, row.id)
        slots = {e.slot.name for e in self.pool.entries if e.slot is not None}
        for name in self.pool.slots.names() - slots:
            self.pool.slots.get(name).remove()
        for task in self.store.list_tasks(status=[TaskStatus.INTERRUPTED.value]):
            if task.sandbox_id and (task.provider, task.sandbox_id) not in live:
                self.store.update_task(task.id, sandbox_id=None)
