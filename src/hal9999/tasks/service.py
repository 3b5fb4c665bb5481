"""Task operations the CLI offers: create, run, stop, cancel, resume, remove, reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from hal9999 import agentfs
from hal9999.agents.registry import resolve_agent
from hal9999.config import HalConfig
from hal9999.credentials import EnvKinds, forwarded_env, iter_unique
from hal9999.envvars import host_text
from hal9999.errors import ConfigError, HalError, TaskStateError, UsageError
from hal9999.events.log import EventLog
from hal9999.events.models import Event, Message, TaskCreated, TaskEnd
from hal9999.events.writers import EventWriters
from hal9999.home import HalPaths
from hal9999.hostread import write_text
from hal9999.pool.settings import provider_settings
from hal9999.process.base import arm_start, never_started, read_exit_status
from hal9999.process.caplog import log_cap_from
from hal9999.providers.base import Provider
from hal9999.redact import SecretMasker
from hal9999.spec import ArgvCommand
from hal9999.store import Store, TaskRecord
from hal9999.tasks import gitrepo, mirror
from hal9999.tasks.alive import runner_alive
from hal9999.tasks.bringback import forget_incoming
from hal9999.tasks.claim import claim
from hal9999.tasks.collect import drop_cut_locks
from hal9999.tasks.context import Adopted, RunContext, process_spec
from hal9999.tasks.fromissue import with_issue
from hal9999.tasks.output import shown_notes
from hal9999.tasks.plugins import (
    Plugins,
    check_provider_tables,
    load_process_manager,
    load_provider_for,
)
from hal9999.tasks.request import (
    RunRequest,
    config_notes,
    new_task_id,
    provider_list,
    with_model,
)
from hal9999.tasks.runner import TaskRunner
from hal9999.tasks.secrets import TaskSecrets
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE, RESUMABLE, TaskStatus, transition
from hal9999.values import check_base_url, describe

if TYPE_CHECKING:  # only the daemon passes a policy; a run that succeeds never loads it
    from hal9999.tasks.retry import RetryPolicy

TASK_CONFIG = "config.json"
"""In a session: the settings the task was created with, when they differ from the
service's (the caller's ``./hal.toml``, say)."""
TASK_ORIGIN = "config-origin.json"
"""Beside it: which file or ``HAL_*`` variable set each of them, for the errors of a resume."""
INDEX_BATCH = 256
"""Event index rows per store write for task event logs (phase and end events flush, and
no event waits longer than the log's ``max_delay``): a store transaction costs as much as
a few dozen rows, so a chatty agent's output is indexed in few of them."""


def never_ran(task: TaskRecord) -> bool:
    """Whether ``task`` was queued for its first run and none ever started: then it has no
    agent, no sandbox, and no labelled sandbox of a crashed run to look for.

    A run's first move is ``queued -> provisioning`` (compare-and-set) before it makes
    anything, so a halt that moved the task out of ``queued`` has nothing to stop. Every
    way back to ``queued`` after a run counts (a resume, an agent or infrastructure retry).
    """
    return (
        task.status == TaskStatus.QUEUED
        and task.sandbox_id is None
        and task.started_at is None
        and task.resumes == 0
        and task.agent_retries == 0
        and task.infra_retries == 0
    )


class TaskService(TaskSecrets):
    """The task layer behind the CLI (and, later, the daemon)."""

    def __init__(
        self,
        config: HalConfig,
        store: Store,
        environ: Mapping[str, str],
        plugins: Plugins | None = None,
    ) -> None:
        super().__init__(config, environ)
        self.store = store
        # A home it cannot write is read; its first write says so (hal9999.home.not_writable).
        self.paths = HalPaths(config.home) if store.read_only else HalPaths(config.home).ensure()
        self.plugins = plugins or Plugins(config)
        """This process's providers and process managers: its runs, stops and kills use
        them (in a daemon, the pool's own)."""
        self.runner = TaskRunner(config, store, environ, self.plugins)
        self.writers = EventWriters(store, index_batch=INDEX_BATCH)
        """The one event writer of each task in this process (the daemon adds its bus)."""
        self.contexts: dict[str, RunContext] = {}
        """Runs in progress in this process, by task id."""

    def config_for(self, task: TaskRecord) -> HalConfig:
        """The settings ``task`` was created with (this service's, when it kept none)."""
        path = self.session(task).root / TASK_CONFIG
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return self.config
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the settings of task {task.id} ({path}): {exc}",
                hint=f"remove {path} to run it with the current settings",
            ) from exc
        # The home is where this service keeps the task, whoever created it.
        try:
            config = HalConfig.model_validate({**data, "home": str(self.config.home)})
        except ValidationError as exc:  # kept by an older hal, whose rules took more
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise ConfigError(
                f"the settings task {task.id} was created with are refused: {where}: "
                f"{describe(error)}",
                hint=f"start a new task with `hal run`, or fix {where} in {path}",
            ) from exc
        from hal9999.config_origin import load_origin  # a task keeping its settings only

        return load_origin(config, path.parent / TASK_ORIGIN)

    def runner_for(self, config: HalConfig) -> TaskRunner:
        """A runner applying ``config`` (sharing this service's sandbox source)."""
        if config == self.config:
            return self.runner
        runner = TaskRunner(config, self.store, self.environ)
        runner.sandboxes = self.runner.sandboxes
        runner.channel_for = self.runner.channel_for
        return runner

    @contextmanager
    def events(self, task: TaskRecord, masker: SecretMasker | None = None) -> Iterator[EventLog]:
        """The task's event writer (shared with whoever else in this process writes it)."""
        with self.writers.open(task.id, self.session(task).events, masker) as log:
            yield log

    # -- create ------------------------------------------------------------------------
    async def create(self, req: RunRequest) -> TaskRecord:
        """Validate the request, create the record and session; the task is ``queued``."""
        fetched = None
        if req.issue is not None:
            req, fetched = await asyncio.to_thread(
                with_issue, req, self.config, {**self.environ, **req.forge_tokens}
            )
        config, providers = self._check(req)
        source = await gitrepo.resolve_source(req.repo, req.cwd)
        return self._make(req, config, providers, source, notes=[fetched] if fetched else [])

    def create_blocking(
        self,
        req: RunRequest,
        named: Callable[[str], None] | None = None,
    ) -> TaskRecord:
        """:meth:`create` for a caller in a worker thread (the daemon's API: the store's
        write lock may be held elsewhere), without an event loop of its own (a loop and its
        executor's threads per submission would cost the daemon's CPU).
        ``named`` is told the task's id before its row exists (a daemon notes what its
        scheduler must run it with: a dispatch may start it before this returns)."""
        fetched = None
        if req.issue is not None:
            req, fetched = with_issue(req, self.config, {**self.environ, **req.forge_tokens})
        config, providers = self._check(req)
        source = gitrepo.resolve_source_blocking(req.repo, req.cwd)
        notes: list[Event] = [fetched] if fetched else []
        return self._make(req, config, providers, source, named, notes)

    def _check(self, req: RunRequest) -> tuple[HalConfig, list[str]]:
        """The request's settings and providers, once everything but its source is valid."""
        if not str(req.prompt).strip():
            raise UsageError("the prompt is empty", hint='hal run "describe the work"')
        config = self.config
        if req.config is not None:
            config = req.config.model_copy(update={"home": self.config.home})
        if req.model is not None:
            config = with_model(config, req.agent, req.model)
        check_provider_tables(config)  # names the config's own mistakes before the request's
        log_cap_from(self.environ)  # a bad HAL_LOG_CAP_MB fails here, not at the launch
        if config.hive:  # a typo in [hive] is named as in every other table (none: no import)
            from hal9999.hivesettings import hive_settings

            hive_settings(config)
        if config.forges:  # before any task exists: a URL task's clone reads it too
            from hal9999.forges.settings import check_forges

            check_forges(config)
        settings = config.agent_settings(req.agent)
        resolve_agent(req.agent, settings)
        check_base_url(req.agent, settings.base_url)  # a config object built past its check
        self.check_prompt(req, config)
        providers = provider_list(req.provider)
        # Settings equal to the service's (an in-process `hal run` sends a copy) run on its
        # runner (runner_for): the provider is the runner's, not one more built and dropped.
        shared = config is self.config or config == self.config
        for name in providers:
            if shared:
                self.runner.provider(name)  # the one its runs use: built once
            else:
                load_provider_for(config, name)
            provider_settings(config, self.environ, name)  # [pool]: before any task exists
        if shared:
            self.plugins.manager(req.process_manager)
        else:
            load_process_manager(config, req.process_manager)
        forwarded_env(
            [n for n in iter_unique(req.env_names, req.secret_names) if n not in req.given_env],
            self.environ,
        )
        if req.ref is not None:
            gitrepo.check_ref(req.ref)  # before any task exists: never a git option later
        return config, providers

    def _make(
        self,
        req: RunRequest,
        config: HalConfig,
        providers: list[str],
        source: gitrepo.RepoSource,
        named: Callable[[str], None] | None = None,
        notes: list[Event] | None = None,
    ) -> TaskRecord:
        """The record, session and first event of a checked request (with ``notes`` and
        the request's config notes right after it, in the same write of the event log)."""
        task_id = new_task_id(self.store.has_task)
        if named is not None:
            named(task_id)
        session = Session(self.paths.ensure_session(task_id))
        session.create()
        session.workspace.mkdir(exist_ok=True)
        record = TaskRecord(
            id=task_id,
            prompt=req.prompt,
            agent=req.agent,
            provider=providers[0],
            providers=providers if len(providers) > 1 else [],
            priority=req.priority,
            retries=req.retries,
            process_manager=req.process_manager,
            repo=source.location,
            repo_kind=source.kind,
            ref=req.ref,
            branch=req.branch or f"hal/{task_id}",
            status=TaskStatus.QUEUED.value,
            created_at=time.time(),
            session_dir=str(session.root),
            timeout_s=req.timeout_s,
            env_keys=list(iter_unique(req.env_names, req.secret_names, config.forward_env)),
            runner_pid=req.runner_pid,
            issue=req.issue,
        )
        literal = req.given_env if req.literal_names is None else req.literal_names
        if literal or req.secret_names:  # none: a missing file reads as none (a file fewer)
            EnvKinds(literal=sorted(literal), secret=sorted(req.secret_names)).save(
                self.env_kinds_path(record)
            )
        if config != self.config:
            agentfs.write_host_file(
                session.root / TASK_CONFIG, iter([config.model_dump_json().encode()])
            )
            from hal9999.config_origin import save_origin

            save_origin(config, session.root / TASK_ORIGIN)  # a resume's errors name them
        budget = (req.max_tokens, req.max_cost_usd)
        if budget != (None, None) or req.egress or req.egress_only is not None:
            from hal9999.gateway.tasks import save_budget  # it writes nothing for none of them

            save_budget(session.run_dir, *budget, req.egress, req.egress_only)
        self.store.insert_task(record)
        write_text(session.prompt_file, req.prompt)  # no file object
        with self.events(record) as log:
            log.emit(
                TaskCreated(
                    prompt_chars=len(req.prompt),
                    agent=req.agent,
                    provider=",".join(providers),
                    repo=source.location,
                    ref=req.ref,
                )
            )
            for note in [*(notes or []), *config_notes(req.config_sources)]:
                log.emit(note)
        return record

    # -- run ---------------------------------------------------------------------------
    async def run(
        self,
        task_id: str,
        *,
        given_env: Mapping[str, str] | None = None,
        prompt: str | None = None,
        on_output: Callable[[str], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        adopted: Adopted | None = None,
        handed_from: int | None = None,
        retry: RetryPolicy | None = None,
        upstream_keys: Mapping[str, str] | None = None,
        forge_tokens: Mapping[str, str] | None = None,
    ) -> TaskRecord:
        """Run a queued task (or carry on an ``adopted`` one) to its end in this process.

        The task is claimed first (:mod:`hal9999.tasks.claim`; ``handed_from`` is the process
        that started this one to run it): when another live hal process holds it, this
        raises :class:`TaskStateError` before anything is written, made or opened. With
        ``retry`` (the daemon's policy), a failure it retries ends the run ``queued`` again
        (see :mod:`hal9999.tasks.retry`). ``upstream_keys`` are the caller's API keys for the
        gateway (:attr:`RunRequest.upstream_keys`), masked like the task's secrets;
        ``forge_tokens`` the caller's forge tokens (:attr:`RunRequest.forge_tokens`), for
        host git only, masked too."""
        task = self.store.get_task(task_id)
        if task.runner_pid != os.getpid():  # a task this process queued names it already
            task = await asyncio.to_thread(claim, self.store, task_id, handed_from=handed_from)
        given = dict(given_env or {})
        forwarded = [name for name in task.env_keys if name not in given]
        unknown: tuple[str, ...] = ()
        if adopted is not None:
            # Its agent runs with its environment already: carrying it on needs none of the
            # values (a daemon after a crash has none: they are never stored). Those this
            # process has mask its output; the others it cannot (see RunContext.unknown).
            unknown = tuple(name for name in forwarded if name not in self.environ)
            forwarded = [name for name in forwarded if name not in unknown]
        secrets_env = {**forwarded_env(forwarded, self.environ), **given}
        # Config secrets are forwarded when set (not required, unlike --env and --secret).
        for name in self.config.secrets:
            if name not in secrets_env and name in self.environ:
                secrets_env[name] = host_text(name, self.environ[name])
        keys = dict(upstream_keys or {})
        names, found = self.secrets_of(task, {**keys, **secrets_env})
        forge = dict(forge_tokens or {})
        masker = self.masker_of([*found.values(), *keys.values(), *forge.values()])
        with self.events(task, masker) as events:
            ctx = RunContext(
                task=task,
                session=self.session(task),
                events=events,
                masker=masker,
                secrets=secrets_env,
                upstream_keys=keys,
                forge_tokens=forge,
                on_output=on_output,
                on_event=on_event,
                mask_names=tuple(sorted(found)),
                checks_patch=bool(names),
                unknown=tuple(name for name in unknown if name in names),
                adopted=adopted,
                retry=retry,
            )
            self.contexts[task.id] = ctx
            runner = self.runner_for(self.config_for(task))
            notes = shown_notes(ctx)
            events.add_sink(notes)
            try:
                return await runner.run(ctx, prompt)
            finally:
                events.remove_sink(notes)
                self.contexts.pop(task.id, None)

    def fail_unstarted(self, task_id: str, error: HalError) -> None:
        """Record ``error`` as the end of a task this process claimed but could not start
        (still ``queued``: nothing was made for it), with the way to run it again; a task
        that moved on, or that this process never claimed (the claim itself failed), is
        left as it is."""
        task = self.store.get_task(task_id)
        if task.status != TaskStatus.QUEUED or task.runner_pid != os.getpid():
            return
        # No "--env NAME=VALUE" here: the lacking variable may be a secret, never for argv.
        again = f"`hal task resume {task.id}` runs it again"
        masker = self.masker(task)
        line = masker.mask(f"{error.message} ({f'{error.hint}; ' if error.hint else ''}{again})")
        with self.events(task, masker) as events:
            try:
                transition(
                    self.store, events, task.id, TaskStatus.FAILED,
                    expect=TaskStatus.QUEUED, detail=masker.mask(error.message),
                    runner_pid=None, finished_at=time.time(),
                    error_code=error.code, error_message=line,
                )  # fmt: skip
            except HalError:
                return  # moved meanwhile: whoever moved it says what became of it
            events.emit(TaskEnd(status=TaskStatus.FAILED.value, error_code=error.code, error=line))

    def detach(self, task_id: str) -> None:
        """Let a run in progress leave its agent running (a daemon shutting down)."""
        ctx = self.contexts.get(task_id)
        if ctx is not None:
            ctx.detached = True

    # -- control -----------------------------------------------------------------------
    async def halt(self, task_id: str, target: TaskStatus, reason: str) -> TaskRecord:
        """Stop the agent, destroy the sandbox, keep the session; record ``target``."""
        task = await asyncio.to_thread(self.find, task_id)  # threads: a daemon's event loop
        if task.status == target and task.sandbox_id:  # a stop or cancel killed before its
            await self.kill(task)  # kill left the agent running: this one ends it
            return await asyncio.to_thread(self.store.get_task, task.id)
        if target is TaskStatus.STOPPED and task.status == TaskStatus.STOPPED:
            return task
        # Record first (compare-and-set: a runner finishing at this moment either finishes
        # first, and this fails, or sees the task was taken from it).
        with self.events(task, self.masker(task)) as events:
            previous, halted = await asyncio.to_thread(
                transition, self.store, events, task.id, target,
                detail=reason, finished_at=time.time(),
            )  # fmt: skip
            # A task that never ran has nothing to stop: no process manager call, no scan of
            # every sandbox record for its label (a queued task's cancel took ~0.5 s of it).
            # The move wrote only the status and finished_at, which never_ran does not read.
            killed = not never_ran(halted.model_copy(update={"status": previous}))
            if (ctx := self.contexts.get(task.id)) is not None:
                ctx.halted = True  # before the kill's first wait: see AgentLauncher.launch
            if killed:
                await self.kill(task)
            if killed and previous == TaskStatus.COLLECTING:
                # Its sandbox gone, no git of the session lives: a collection cut short
                # leaves no lock for the next run to meet.
                await asyncio.to_thread(drop_cut_locks, self.session(task), task.branch)
            events.emit(TaskEnd(status=target.value, error_code=None, error=reason))
        return await asyncio.to_thread(self.store.get_task, halted.id) if killed else halted

    async def kill(self, task: TaskRecord) -> None:
        """Stop the task's process and destroy its sandbox, if any remain."""
        manager = self.plugins.manager(task.process_manager)
        await manager.stop(process_spec(task, self.session(task), ArgvCommand(argv=("true",))))
        await self.destroy_sandboxes(self.plugins.provider(task.provider), task)
        await asyncio.to_thread(self.store.update_task, task.id, sandbox_id=None)

    async def destroy_sandboxes(self, provider: Provider, task: TaskRecord) -> None:
        """Destroy every sandbox the provider holds for ``task`` (recorded or labelled)."""
        ids = {task.sandbox_id} if task.sandbox_id else set()
        for info in await provider.list():
            if info.spec.labels.get("hal.task") == task.id:
                ids.add(info.id)
        for sandbox_id in ids:
            await provider.destroy(sandbox_id)

    async def stop(self, task_id: str) -> TaskRecord:
        """Stop a task; it can be resumed."""
        return await self.halt(task_id, TaskStatus.STOPPED, "stopped by the user")

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task for good (its session stays until ``hal task rm``)."""
        return await self.halt(task_id, TaskStatus.CANCELLED, "cancelled by the user")

    def prepare_resume(
        self, task_id: str, named: Callable[[str], None] | None = None
    ) -> TaskRecord:
        """Move a resting task back to ``queued`` for another run, held by this process (its
        ``runner_pid``: a daemon on the same home does not start it meanwhile). ``named`` is
        told the task's id before it is queued (see :meth:`create_blocking`)."""
        task = self.reconcile(self.store.find_task(task_id))
        if task.status == TaskStatus.QUEUED and task.runner_pid != os.getpid():
            # Queued by a hal process that died before it ran it (a daemon, a `hal run`
            # waiting out a retry's backoff): this process takes it as it is. The claim
            # refuses, naming it, one that another live hal process holds.
            claimed = claim(self.store, task.id)
            if named is not None:
                named(task.id)
            return claimed
        if task.status not in RESUMABLE:
            raise TaskStateError(
                f"task {task.id} is {task.status}; only a stopped or finished task can resume",
                hint=f"stop it first with `hal task stop {task.id}`",
            )
        if named is not None:
            named(task.id)
        with self.events(task) as events:
            _, queued = transition(
                self.store,
                events,
                task.id,
                TaskStatus.QUEUED,
                expect=task.status,
                detail="resumed",
                runner_pid=os.getpid(),  # this process's until it (or its runner) runs it
                resumes=task.resumes + 1,
                exit_code=None,
                error_code=None,
                error_message=None,
                finished_at=None,
            )
        return queued

    async def remove(self, task_id: str, *, force: bool = False) -> TaskRecord:
        """Delete a task's record and session directory."""
        task = self.reconcile(self.store.find_task(task_id))
        if task.status in ACTIVE and not force:
            raise TaskStateError(
                f"task {task.id} is {task.status}",
                hint=f"cancel it first (`hal task cancel {task.id}`) or pass --force",
            )
        if task.status in ACTIVE:
            # Cancelled first, as `hal task cancel` does: its runner ends as taken from it,
            # never collecting into a session that is going, and a foreground `hal run`
            # following it says why it ended.
            with contextlib.suppress(TaskStateError):  # it ended meanwhile
                task = await self.halt(task.id, TaskStatus.CANCELLED, "removed by the user")
        await self.kill(task)
        await forget_incoming(gitrepo.RepoSource(task.repo_kind, task.repo), task.id)
        borrowed = mirror.linked_snapshot(Path(task.session_dir))
        # A session can be large: deleting it must not stall a daemon's other work. It holds
        # agent-made files, so no link in it is followed and closed directories are opened.
        try:
            await asyncio.to_thread(agentfs.remove_tree, Path(task.session_dir))
        except HalError as exc:
            raise TaskStateError(
                f"cannot remove the session of task {task.id}: {exc.message}",
                hint=f"remove {task.session_dir} by hand, then run `hal task rm {task.id}` again",
            ) from exc
        self.store.delete_task(task.id)
        if borrowed is not None:  # its snapshot goes once no other session borrows from it
            await mirror.sweep_after_removal(self.config.home, borrowed)
        return task

    # -- truth -------------------------------------------------------------------------
    def reconcile(self, task: TaskRecord) -> TaskRecord:
        """Mark a task in flight whose runner died as ``interrupted`` (a queued one stays
        queued: nothing of it runs); return the fresh record."""
        if task.status not in ACTIVE or runner_alive(task.runner_pid, task.runner_started):
            return task
        if task.status == TaskStatus.QUEUED:
            # Nothing of it runs: it waits for a runner, whoever queued it. The next `hal
            # serve` starts it (its recovery claims every queued task no live hal holds) and
            # `hal task resume` runs it here; marking it interrupted would keep both from it
            # (a retry a crashed daemon had queued, listed before the daemon came back).
            return task
        exit_file = self.session(task).exit_file(task.resumes)
        exit_code = read_exit_status(exit_file)
        if exit_code is not None:
            agent = f"the agent exited with status {exit_code}"
        elif task.status == TaskStatus.RUNNING and never_started(exit_file):
            agent = "the agent had not started (its start never came)"
        elif task.status in (TaskStatus.RUNNING, TaskStatus.COLLECTING):
            agent = "the agent may still be running"
        else:  # it died while acquiring a sandbox or cloning: no agent was ever started
            agent = f"the agent had not started (the task was {task.status})"
        message = f"the hal process running this task died; {agent}"
        # What to do is in the record (`hal task show` prints it), not only in its events.
        told = (f"{message}; `hal task resume {task.id}` continues it, "
                f"`hal task stop {task.id}` stops it")  # fmt: skip
        with self.events(task) as events:
            try:
                _, interrupted = transition(
                    self.store, events, task.id, TaskStatus.INTERRUPTED, expect=task.status,
                    detail=message, runner_pid=None, error_code="interrupted", error_message=told,
                )  # fmt: skip
            except TaskStateError:
                return self.store.get_task(task.id)  # it moved meanwhile: that is the truth
            events.emit(Message(level="warning", text=told))
        if task.status in (TaskStatus.PROVISIONING, TaskStatus.PREPARING):  # nothing to start:
            arm_start(exit_file)  # its mark has the next daemon queue it again, as if unlisted
        return interrupted

    def list(
        self, *, status: list[str] | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Tasks, newest first, with dead runners reconciled; an unknown state is refused."""
        known = [state.value for state in TaskStatus]
        unknown = [name for name in status or [] if name not in known]
        if unknown:
            hint = f"one of: {', '.join(known)}"
            raise UsageError(f"unknown task state {unknown[0]!r}", hint=hint)
        return [self.reconcile(t) for t in self.store.list_tasks(status=status, limit=limit)]

    def find(self, task_id: str) -> TaskRecord:
        """One task by id or unique prefix, reconciled."""
        return self.reconcile(self.store.find_task(task_id))
