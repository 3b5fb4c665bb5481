"""What a starting daemon does with what an earlier one (or a killed ``hal``) left behind.

Every task gets a truthful state and every sandbox an owner:

- a task whose runner is alive elsewhere (a foreground ``hal run``) is left alone;
- a queued task is queued again under this daemon;
- a running, collecting (or interrupted) task whose agent still runs in tmux, or has ended
  with its exit status recorded, is *adopted*: its log is followed from where its events
  stop, and it is collected and finished as if nothing had happened (a collecting one is
  collected again; its agent never runs twice);
- any other task that was in flight is marked ``interrupted`` (resumable), and its process and
  sandbox are removed; one whose agent had not started (provisioning, preparing, or the mark
  of its start there: :func:`take_unstarted`, also once a ``hal`` reconciled it) is then
  queued again, up to the scheduler's ``max_infra_retries`` times a task;
- a sandbox no adopted or live task holds is an orphan and is destroyed; a sandbox recorded
  in the store but gone from its provider is forgotten, with a log line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from hal9999.agents.registry import resolve_agent
from hal9999.errors import HalError, TaskStateError
from hal9999.events.models import Message, Output, Phase, Usage
from hal9999.events.reader import read_events
from hal9999.home import unusable_session_file
from hal9999.pool import WarmPool
from hal9999.process.base import ProcessManager, ProcessStatus, take_unstarted
from hal9999.providers.base import Provider, Sandbox
from hal9999.spec import ArgvCommand, ProcessSpec
from hal9999.store import TaskRecord
from hal9999.tasks.alive import runner_alive
from hal9999.tasks.claim import claim
from hal9999.tasks.context import Adopted, Totals, process_spec
from hal9999.tasks.output import parsed_offset_after
from hal9999.tasks.sandboxes import PoolSource
from hal9999.tasks.service import TaskService
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE, RESTING, TaskStatus, transition

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


def _died(task: TaskRecord) -> str:
    """Why a task in flight is ``interrupted``."""
    return (
        f"the hal process running this task died while it was {task.status}; "
        f"`hal task resume {task.id}` continues it"
    )


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
        *,
        retries: int = 0,
    ) -> None:
        self.service = service
        self.store = service.store
        self.pool = pool
        self.source = source
        self.providers = providers
        self.retries = retries
        """How many times a task whose agent had not started is queued again (its
        ``infra_retries``); past that it is left ``interrupted``."""
        self.elsewhere: set[str] = set()
        """Tasks a live hal process other than this one runs (a foreground ``hal run``)."""

    async def run(self) -> tuple[RecoveryReport, list[tuple[TaskRecord, Adopted]]]:
        """Reconcile everything; returns the report and the runs to carry on."""
        report = RecoveryReport()
        keep: set[tuple[str, str]] = set()
        self.elsewhere = set()
        adoptions: list[tuple[TaskRecord, Adopted]] = []
        statuses = [s.value for s in (*ACTIVE, TaskStatus.INTERRUPTED)]

        def leave(task: TaskRecord) -> None:
            report.left_alone.append(task.id)
            self.elsewhere.add(task.id)
            if task.sandbox_id:
                keep.add((task.provider, task.sandbox_id))

        for task in self.store.list_tasks(status=statuses):
            me = os.getpid()
            if task.runner_pid not in (None, me) and runner_alive(
                task.runner_pid, task.runner_started
            ):
                leave(task)
                continue
            try:
                if task.status == TaskStatus.QUEUED:
                    await asyncio.to_thread(claim, self.store, task.id)
                    report.requeued.append(task.id)
                    continue
                adopted = None
                collecting = task.status == TaskStatus.COLLECTING
                if collecting:
                    # Its agent has ended and its work is in the sandbox: the task is carried
                    # on like one whose runner died while the agent ran (collected again,
                    # its agent never run again) when its sandbox lives.
                    marked = await self.mark_died(task)
                    if marked is None:
                        continue
                    task = marked
                if task.status in (TaskStatus.RUNNING, TaskStatus.INTERRUPTED):
                    adopted = await self.adoptable(task)
                if adopted is not None:
                    keep.add((task.provider, adopted.sandbox.id))
                    try:
                        marked = await asyncio.to_thread(self.mark_adopted, task)
                    except TaskStateError:
                        # The winner (a resume adopting the same agent) runs the sandbox:
                        # this pool lets go of it untouched.
                        await self.source.disown(adopted.sandbox)
                        raise
                    adoptions.append((marked, adopted))
                    report.adopted.append(task.id)
                    continue
                exit_file = self.service.session(task).exit_file(task.resumes)
                if task.status == TaskStatus.INTERRUPTED:
                    # Reconciled by a `hal` before this daemon, its start's mark still there.
                    unstarted = not collecting and task.error_code == "interrupted"
                    unstarted = unstarted and take_unstarted(exit_file)
                    if task.sandbox_id or task.runner_pid:
                        await self.clean(task)
                    if unstarted and await asyncio.to_thread(self.requeue, task.id):
                        report.requeued.append(task.id)
                    elif collecting or unstarted:
                        report.interrupted.append(task.id)
                else:
                    # Its agent had not started: before its start, or `running` with the mark
                    # of its start there (a runner killed -9 before its supervisor took it,
                    # or a prestarted supervisor's that never got its `g`).
                    unstarted = task.status in (TaskStatus.PROVISIONING, TaskStatus.PREPARING) or (
                        task.status == TaskStatus.RUNNING and take_unstarted(exit_file)
                    )
                    await self.interrupt(task)
                    if unstarted and await asyncio.to_thread(self.requeue, task.id):
                        report.requeued.append(task.id)
                    else:
                        report.interrupted.append(task.id)
            except TaskStateError as exc:  # another hal process took it since the listing
                logger.warning("task %s left alone: %s", task.id, exc.one_line())
                leave(task)
        await self.sweep(keep, report)
        return report, adoptions

    async def adoptable(self, task: TaskRecord) -> Adopted | None:
        """How to carry on ``task``, when its agent runs or has ended and its sandbox lives."""
        if not task.sandbox_id:
            return None
        try:
            if (await agent_status(self.service, task)).state == "missing":
                return None
        except HalError as exc:
            logger.warning("task %s cannot be adopted: %s", task.id, exc.one_line())
            return None
        sandbox = await self.take_sandbox(task)
        return adoption(self.service, task, sandbox) if sandbox is not None else None

    async def take_sandbox(self, task: TaskRecord) -> Sandbox | None:
        """The task's sandbox, leased to this daemon's pool; None when it is gone."""
        if not task.sandbox_id:
            return None
        try:
            lease = await self.pool.adopt(task.provider, task.sandbox_id, task.id)
        except HalError as exc:
            logger.warning("task %s cannot be adopted: %s", task.id, exc.one_line())
            return None
        self.source.adopted(lease)
        return lease.sandbox

    def mark_adopted(self, task: TaskRecord) -> TaskRecord:
        """Record that this daemon now runs ``task``."""
        return mark_adopted(self.service, task, "hal serve")

    async def interrupt(self, task: TaskRecord) -> None:
        """Mark an in-flight task ``interrupted`` (resumable), remove its process and sandbox;
        raises :class:`TaskStateError` when another process moved or took it since."""
        if await self.mark_died(task) is not None:
            await self.clean(task)

    async def mark_died(self, task: TaskRecord) -> TaskRecord | None:
        """Mark an in-flight task ``interrupted`` because its runner died; its record then, or
        None (logged) when the mark failed for another reason; raises
        :class:`TaskStateError` when another process moved or took it since."""
        try:
            return await asyncio.to_thread(self._mark_interrupted, task, _died(task))
        except TaskStateError:
            raise  # it moved since the listing: whoever moved it has it (left alone)
        except HalError as exc:
            logger.warning("task %s changed while recovering: %s", task.id, exc.one_line())
            return None

    def _mark_interrupted(self, task: TaskRecord, reason: str) -> TaskRecord:
        # In a thread: a write lock held by another process must not stall the loop.
        with self.service.events(task) as events:
            _, record = transition(
                self.store, events, task.id, TaskStatus.INTERRUPTED, expect=task.status,
                detail=reason, runner_pid=None, error_code="interrupted", error_message=reason,
            )  # fmt: skip
        return record

    def requeue(self, task_id: str) -> bool:
        """Queue again, under this daemon, a task just interrupted before its agent started:
        nothing of it ran (no work to keep, nothing to pay for twice). At most
        :attr:`retries` times a task, so one that takes its daemon down while it is prepared
        does not do so forever; a task a resume took meanwhile is left to it."""
        task = self.store.get_task(task_id)
        if (
            task.status != TaskStatus.INTERRUPTED
            or task.runner_pid is not None
            or task.infra_retries >= self.retries
        ):
            return False
        with self.service.events(task) as events:
            try:
                transition(
                    self.store, events, task.id, TaskStatus.QUEUED,
                    expect=TaskStatus.INTERRUPTED,
                    detail="queued again: its agent had not started",
                    runner_pid=os.getpid(), infra_retries=task.infra_retries + 1,
                    exit_code=None, error_code=None, error_message=None, finished_at=None,
                )  # fmt: skip
            except HalError:
                return False  # moved meanwhile (a resume): whoever moved it has it
        return True

    async def clean(self, task: TaskRecord) -> None:
        """Stop what an interrupted task left running (no agent to adopt). Claimed first,
        like any run (:mod:`.claim`): raises :class:`TaskStateError`, having touched
        nothing, when a ``hal task resume`` took the task since it was listed (its run, its
        sandbox and its ``runner_pid`` are the resume's); lets go of the task after, only
        while it still names this daemon."""
        await asyncio.to_thread(claim, self.store, task.id)
        try:
            await self.service.kill(task)
        except HalError as exc:
            logger.warning("task %s: cleaning up failed: %s", task.id, exc.one_line())
        await asyncio.to_thread(self.store.swap_runner, task.id, os.getpid(), None)

    def provider_names(self) -> Iterable[str]:
        """Every provider that may hold sandboxes: state dirs, store records, tasks."""
        names = {row.provider for row in self.store.list_sandboxes()}
        state = self.service.paths.sandboxes
        if state.exists():
            names |= {p.name for p in state.iterdir() if p.is_dir()}
        return sorted(names)

    def runs_elsewhere(self, task_id: str | None) -> bool:
        """Whether another live hal process runs the task a sandbox is labelled with: one
        left alone, or one a foreground ``hal run`` created after the tasks were listed (it
        records its task before it creates the sandbox, so a fresh read finds it)."""
        if task_id is None:
            return False
        if task_id in self.elsewhere:
            return True
        task = self.store.task_or_none(task_id)
        if task is None:
            return False
        runner = task.runner_pid
        if runner in (None, os.getpid()) or not runner_alive(runner, task.runner_started):
            return False
        self.elsewhere.add(task_id)
        return True

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
                if (name, info.id) in keep or self.runs_elsewhere(info.spec.labels.get("hal.task")):
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
                await asyncio.to_thread(self.store.delete_sandbox, row.provider, row.id)
                if not any(o == f"{row.provider}:{row.id}" for o in report.orphans_destroyed):
                    report.gone.append(f"{row.provider}:{row.id}")
                    logger.info("sandbox %s:%s was recorded but is gone", row.provider, row.id)
        slots = {e.slot.name for e in self.pool.entries if e.slot is not None}
        for name in self.pool.slots.names() - slots:
            self.pool.slots.get(name).remove()
        for task in self.store.list_tasks(status=[TaskStatus.INTERRUPTED.value]):
            if task.sandbox_id and (task.provider, task.sandbox_id) not in live:
                # Guarded: a resume that took the task since the listing names its own run's
                # sandbox by now, which must stay recorded.
                await asyncio.to_thread(
                    self.store.update_task, task.id, held_by=os.getpid(), sandbox_id=None
                )


# -- one task whose runner died: attach, follow, resume -----------------------------------


def current_process(service: TaskService, task: TaskRecord) -> tuple[ProcessManager, ProcessSpec]:
    """The process manager and spec of the task's current run (enough to ask or stop it)."""
    manager = service.plugins.manager(task.process_manager)
    return manager, process_spec(task, service.session(task), ArgvCommand(argv=("true",)))


async def agent_status(service: TaskService, task: TaskRecord) -> ProcessStatus:
    """Whether the agent of the task's current run lives, whoever started it."""
    manager, pspec = current_process(service, task)
    return await manager.status(pspec)


def adoption(service: TaskService, task: TaskRecord, sandbox: Sandbox) -> Adopted:
    """How a new runner picks up the task's live (or just ended) agent in ``sandbox``: the
    log offset its events cover, the parsed events already emitted, its usage so far."""
    session = service.session(task)
    _, pspec = current_process(service, task)
    resolve_agent(task.agent, service.config.agent_settings(task.agent))
    offset, _texts, totals = replay(session)
    # The supervisor parsed the raw output; carry on after the parsed events already emitted.
    parsed = parsed_offset_after(pspec.events_path, offset) if pspec.events_path else 0
    ran_for = time.time() - (task.started_at or time.time())
    return Adopted(sandbox, pspec, offset, parsed, time.monotonic() - ran_for, totals)


def mark_adopted(service: TaskService, task: TaskRecord, by: str) -> TaskRecord:
    """Record that this process (``by`` says which command) now runs ``task``; raises
    :class:`TaskStateError`, having written nothing, when another live hal process claimed
    it first (a daemon's recovery and a resume adopting one agent: one of them runs it)."""
    record = claim(service.store, task.id)
    with service.events(task) as events:
        if task.status == TaskStatus.INTERRUPTED:
            # Claimed before ``running`` is written: a task shown running with its dead
            # runner's pid, even for a moment, is one any hal process reconciles back to
            # interrupted, and a second resume then adopted it again.
            _, record = transition(
                service.store, events, task.id, TaskStatus.RUNNING,
                expect=TaskStatus.INTERRUPTED, detail="adopted", error_code=None,
                error_message=None,
            )  # fmt: skip
        # Said of a live agent and of one that ended with its runner (collected again) alike.
        text = f"adopted by {by} (pid {os.getpid()}); its sandbox lived on, its agent runs once"
        events.emit(Message(text=text))
    return record


@contextlib.contextmanager
def resume_lock(session: Session, task_id: str) -> Iterator[None]:
    """Held while one process decides how to resume a task, so two resumes never both
    start (or adopt) a run over the same workspace."""
    lock = session.run_dir / "resume.lock"
    try:
        session.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # the session's directory not hal's to write (mode 000, say)
        raise unusable_session_file(lock, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TaskStateError(
                f"task {task_id} is being resumed by another hal process",
                hint=f"watch it with `hal task logs -f {task_id}`",
            ) from None
        yield
    finally:
        os.close(fd)


async def resume(
    service: TaskService,
    task_id: str,
    *,
    prompt: str | None = None,
    env: Mapping[str, str] | None = None,
    take_sandbox: Callable[[TaskRecord], Awaitable[Sandbox | None]] | None = None,
    named: Callable[[str], None] | None = None,
    new_run: Callable[[TaskRecord], None] | None = None,
) -> tuple[TaskRecord, Adopted | None]:
    """Resume a resting task. When its runner died but its agent lives (or has ended and
    not been collected), the agent is adopted rather than started again: the returned
    :class:`Adopted` is to be passed to ``TaskService.run``. ``take_sandbox`` takes over the
    task's sandbox (a daemon leases it into its pool; by default the provider's handle). A
    new ``prompt`` while the agent lives is refused. Never two runs on one workspace.
    ``named`` is told the task's id before a new run is queued (``prepare_resume``). A new
    ``prompt`` holding the value of one of the task's secrets (from ``env``, the variables
    the resume was given, or this process's environment) is refused, naming the variable.
    ``new_run`` checks a task that will run again (not an adoption: a live agent needs
    none of its variables' values) before anything of it is touched; it raises to refuse.
    """
    take = take_sandbox or (lambda task: _live_sandbox(service, task))
    # The database work runs in threads: in a daemon this is on its event loop.
    found = await asyncio.to_thread(service.find, task_id)
    if prompt is not None:
        await asyncio.to_thread(service.check_resume_prompt, found, prompt, env)
    if not (root := service.session(found).root).is_dir():  # (the lock would make it)
        raise TaskStateError(  # a run would fail on it, the task no longer as it was
            f"task {found.id} cannot resume: its session directory {root} is gone",
            hint=f"start a new task with `hal run`, or forget it: `hal task rm {found.id}`",
        )
    with resume_lock(service.session(found), found.id):
        task = await asyncio.to_thread(service.find, found.id)  # fresh, under the lock
        status = ProcessStatus("missing")
        if task.status == TaskStatus.INTERRUPTED:
            status = await agent_status(service, task)
        if status.state == "running" and prompt is not None:
            raise TaskStateError(
                f"the agent of task {task.id} is still running; a new prompt needs a new run",
                hint=f"`hal task resume {task.id}` without a prompt adopts the running agent; "
                f"`hal task stop {task.id}` stops it first",
            )
        if status.state != "missing" and prompt is None:
            sandbox = await take(task)
            if sandbox is not None:
                by = "hal task resume"
                adopted = await asyncio.to_thread(mark_adopted, service, task, by)
                return adopted, adoption(service, task, sandbox)
            if status.state == "running":
                raise TaskStateError(
                    f"the agent of task {task.id} is still running but its sandbox is gone",
                    hint=f"stop it with `hal task stop {task.id}`, then resume",
                )
        if new_run is not None:
            new_run(task)
        if task.status == TaskStatus.INTERRUPTED or (task.sandbox_id and task.status in RESTING):
            # What the dead runner left (an ended agent's tmux server, the old sandbox with
            # the workspace mounted) goes before a new run starts over the workspace; so does
            # what a `hal task stop` killed after it recorded `stopped` left running. Never a
            # task another process runs (a racing resume's adoption): that one is refused.
            await service.kill(task)
        return await asyncio.to_thread(service.prepare_resume, task.id, named), None


async def _live_sandbox(service: TaskService, task: TaskRecord) -> Sandbox | None:
    """The task's recorded sandbox, if its provider still has it."""
    if not task.sandbox_id:
        return None
    try:
        return await service.plugins.provider(task.provider).get(task.sandbox_id)
    except HalError as exc:
        logger.info("task %s: sandbox %s is gone: %s", task.id, task.sandbox_id, exc.one_line())
        return None


async def adopt_again(service: TaskService, task_id: str) -> Adopted:
    """The :class:`Adopted` of a task another hal process just marked adopted for this one
    (``hal task resume --detach`` hands the live agent to a background runner)."""
    task = service.store.get_task(task_id)
    sandbox = await _live_sandbox(service, task)
    if sandbox is None:
        raise TaskStateError(
            f"the sandbox of task {task_id} is gone; its agent cannot be adopted",
            hint=f"`hal task stop {task_id}`, then `hal task resume {task_id}`",
        )
    return adoption(service, task, sandbox)
