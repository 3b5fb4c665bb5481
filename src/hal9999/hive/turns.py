"""The turn loop: wakes an agent when its mailbox has something new and runs one turn.

A turn is one run of the agent's long-lived task: the first creates it (workspace on
``hal/agent/<name>``), every later one resumes it with the agent CLI's own resume (its
session id is on the task), so the gateway, events, masking and collection all apply. The
prompt is the mailbox entries no finished turn has taken.

Delivery, crash-safe: the broker's ``sent`` messages are appended to the agent's ledger
(deduplicated by id, fsynced), then marked ``delivered``. A daemon killed in between
delivers them again after a restart, and the ledger keeps each once. A turn that ends
(well or not, but not a crash or a stop) advances the ledger cursor and marks its messages
``read``; a crashed one is run again over the same entries by crash watch.

Sleeping holds no sandbox, except for a warm agent (``policy.warm``): :mod:`.warm` keeps
its sandbox for its next turn, and the sweep releases it once idle too long. The loop also
looks every ``poll_s`` for mail committed by other processes (a ``hal msg send`` without
the daemon) and for turns left open by a daemon that died (their adopted task is followed
to its end; a vanished one is a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from hal9999.agents.registry import resolve_agent
from hal9999.errors import HalError, HiveError, TaskNotFound
from hal9999.events.hive import HiveGuard, TurnFinished
from hal9999.hive import stats, subtasks, watch
from hal9999.hive.agentfiles import bound_files
from hal9999.hive.agents import AgentDir, build_prompt, first_batch, set_state
from hal9999.hive.broker import OPERATOR, SYSTEM, inbox, mark, send
from hal9999.hive.selfwake import SelfWakes
from hal9999.hive.store import (
    AgentRecord,
    InTransaction,
    get_agent,
    list_agents,
    record_hive_event,
    update_agent,
)
from hal9999.hive.threads import open_count
from hal9999.hive.warm import WarmHolds
from hal9999.hivesettings import HiveSettings
from hal9999.store import TaskRecord
from hal9999.tasks.request import run_request
from hal9999.tasks.sandboxes import PoolSource
from hal9999.tasks.served import ServedTaskAPI
from hal9999.tasks.session import Session
from hal9999.tasks.state import ACTIVE, TaskStatus

logger = logging.getLogger(__name__)

ORPHAN_S = 5.0
"""How long a turn's task may stay in flight with no runner before it counts as crashed."""


class HiveLoop:
    """The daemon's turn loop over every agent of the hive."""

    def __init__(
        self, tasks: ServedTaskAPI, settings: HiveSettings, *, poll_s: float = 2.0
    ) -> None:
        self.tasks = tasks
        """The daemon's task API: every turn's run is created, queued and stopped through it."""
        self.service = tasks.service  # the settings and session files of the agents' tasks
        self.store = self.service.store
        self.home = self.service.config.home
        self.settings = settings
        self.poll_s = poll_s
        self.turns: dict[str, asyncio.Task[None]] = {}
        """Agent name -> its turn in progress in this process."""
        self._hold: dict[str, float] = {}
        """Agent name -> monotonic time before which it does not wake (crash backoff)."""
        self._held: set[str] = set()
        self.self_wakes = SelfWakes(settings.self_wake_min_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._budget_told = False
        self.warm: WarmHolds | None = None
        """Sandboxes held for warm agents between turns (set by :meth:`hold_warm`)."""
        self.before_turn: Callable[[AgentRecord], Awaitable[object]] | None = None
        """Called before a turn's run starts (the daemon's MCP hub: the agent's socket must
        be there before its sandbox starts, which a pod's socket channel lists once)."""
        self.after_remove: Callable[[AgentRecord], Awaitable[object]] | None = None  # hub.retire

    def hold_warm(self, pool: PoolSource) -> WarmHolds:
        """The sandbox source for the daemon's runs: ``pool``'s, keeping warm agents'
        sandboxes between their turns."""
        self.warm = WarmHolds(pool, self.store)
        return self.warm

    async def release_warm(self, task_id: str | None) -> None:
        """Release the sandbox held for the agent whose task is ``task_id``, if any."""
        if self.warm is not None:
            await self.warm.drop(task_id)

    async def shutdown(self) -> None:
        """The daemon stops: release every sandbox held for a warm agent."""
        if self.warm is not None:
            await self.warm.release_all()

    # -- waking ------------------------------------------------------------------------
    def wake(self, name: str) -> None:
        """Run a turn of ``name`` soon if it has mail (thread-safe; the broker's waker)."""
        loop = self._loop
        if loop is None or loop.is_closed() or name in (OPERATOR, SYSTEM):
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake_now, name)

    def _wake_now(self, name: str) -> None:
        if name in self.turns:
            return  # it looks for more mail once this turn is over
        wait = self._hold.get(name, 0.0) - time.monotonic()
        if wait > 0:
            if name not in self._held and self._loop is not None:
                self._held.add(name)
                self._loop.call_later(wait, self._release, name)
            return
        self.turns[name] = asyncio.create_task(self._guarded(name), name=f"turn-{name}")

    def _release(self, name: str) -> None:
        self._held.discard(name)
        self._hold.pop(name, None)
        self._wake_now(name)

    async def run_forever(self) -> None:
        """Wake agents with mail, finish turns a dead daemon left, poll for outside mail."""
        # Before any wake: what is left of a backoff a previous daemon started holds here too.
        try:
            self._hold.update(
                await asyncio.to_thread(watch.stored_holds, self.store, self.settings)
            )
        except Exception:
            logger.exception("hive: cannot read the crash backoffs; agents wake at once")
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("hive: the sweep failed; retrying")
            await asyncio.sleep(self.poll_s)

    async def sweep(self) -> None:
        """One look over every agent (also run at start)."""
        if self.warm is not None:
            await self.warm.reap()  # idle past the limit, stopped, removed: released
        agents = await asyncio.to_thread(list_agents, self.store)
        for agent in agents:
            if agent.name in self.turns:
                continue
            if agent.state == "running":
                self.turns[agent.name] = asyncio.create_task(
                    self._guarded(agent.name, adopted=True), name=f"turn-{agent.name}"
                )
            elif agent.state == "sleeping" and await asyncio.to_thread(self._has_mail, agent.name):
                self._wake_now(agent.name)

    def _has_mail(self, name: str) -> bool:
        # Every ledger entry no finished turn took is a message not yet read: the indexed
        # inbox query answers without reading the ledger file.
        return bool(inbox(self.store, name, limit=1))

    async def _guarded(self, name: str, *, adopted: bool = False) -> None:
        try:
            if adopted:
                await self._finish_adopted(name)
            else:
                await self.turn(name)
        except Exception as exc:
            logger.exception("hive: the turn of %s failed", name)
            why = f"its turn failed in hal ({type(exc).__name__}: {exc})"
            with contextlib.suppress(HalError):
                await asyncio.to_thread(self._failed, name, why)
        finally:
            self.turns.pop(name, None)
            # Mail that arrived during the turn (or a crashed turn's) gets a turn of its own;
            # not after a cancel (the daemon's stop): that turn would begin as it went away;
            # nor when its own reminders wait for their time (a wake is set for then).
            stopping = (current := asyncio.current_task()) is not None and current.cancelling()
            held = self.self_wakes.holds(name)
            if not stopping and not held and await asyncio.to_thread(self._wants_turn, name):
                self._wake_now(name)

    def _abandon(
        self, name: str, result: stats.TurnResult = "error",
        why: str = "its last turn failed in hal",
    ) -> None:  # fmt: skip
        """After a failure inside hal: close the open turn, let the agent sleep again (its
        mail, not read, wakes its next turn)."""
        row = stats.open_turn(self.store, name)
        if row is not None:
            stats.finish_turn(self.store, row.id, result, {}, None)
        set_state(self.store, name, "sleeping", why, expect="running")

    def _failed(self, name: str, why: str) -> None:
        """After a failure inside hal, before or during a turn: a crash (the turn's row
        closed ``crashed``, its mail not read), so the next try waits for crash watch's
        backoff and a failure that stays stops as a crash loop. Retried at once, a failure
        that comes back every time (the agent's state directory gone) spun the daemon."""
        row = stats.open_turn(self.store, name)
        if row is not None:
            stats.finish_turn(self.store, row.id, "crashed", {}, None)
        agent = get_agent(self.store, name)
        if agent.state not in ("running", "sleeping"):
            return  # stopped (by the operator or a guard) meanwhile: it stays so
        verdict = watch.on_crash(self.store, agent, why, self.settings, expect=agent.state)
        if verdict is not None and verdict.restart_in_s is not None:
            self._hold[name] = time.monotonic() + verdict.restart_in_s

    def _wants_turn(self, name: str) -> bool:
        try:
            return get_agent(self.store, name).state == "sleeping" and self._has_mail(name)
        except HalError:
            return False

    # -- one turn ----------------------------------------------------------------------
    def deliver(self, name: str) -> list[dict[str, Any]]:
        """Hand the agent's ``sent`` messages to its ledger, then mark them delivered;
        returns the ledger entries no finished turn has taken."""
        paths = AgentDir.of(self.home, name)
        # Delivered ones too: those a crashed turn took through its tools are not in the
        # ledger yet (the dedupe keeps every other one once).
        fresh = inbox(self.store, name, limit=1000)
        paths.append(fresh)
        mark(self.store, [m.id for m in fresh if m.state == "sent"], "delivered")
        return paths.pending()

    def over_budget(self) -> str | None:
        """Why no turn may start (the hive's daily budget is spent), or None."""
        s = self.settings
        if s.daily_budget_usd is None and s.daily_budget_tokens is None:
            return None
        since = time.time() - 86400
        tokens, cost = stats.hive_spent(self.store, since)
        # The agents' sub-tasks are their work too: without them, run_task spent past it.
        sub_tokens, sub_cost = subtasks.spent(self.store, self.home, since)
        tokens, cost = tokens + sub_tokens, cost + sub_cost
        if s.daily_budget_usd is not None and cost >= s.daily_budget_usd:
            return f"the hive spent ${cost:.2f} in 24 h (budget ${s.daily_budget_usd:g})"
        if s.daily_budget_tokens is not None and tokens >= s.daily_budget_tokens:
            return f"the hive spent {tokens} tokens in 24 h (budget {s.daily_budget_tokens})"
        return None

    async def turn(self, name: str) -> None:
        """Run one turn of ``name`` if it sleeps and has mail."""
        agent = await asyncio.to_thread(get_agent, self.store, name)
        if agent.state != "sleeping":
            return
        entries = first_batch(await asyncio.to_thread(self.deliver, name))
        if not entries:
            return
        if self.self_wakes.hold(name, entries, self._wake_now):
            return  # its own reminders alone, too soon after its last turn
        spent = await asyncio.to_thread(self.over_budget)
        if spent is not None:
            await asyncio.to_thread(self._tell_budget, name, spent)
            return
        self._budget_told = False
        moved = await asyncio.to_thread(
            set_state, self.store, name, "running", None, expect="sleeping"
        )
        if moved is None:
            return
        first = entries[0]
        reason = f"{first['kind']} from {first['sender']}"
        ids = [str(e["id"]) for e in entries]
        turn_id = await asyncio.to_thread(
            stats.start_turn, self.store, name, agent.task_id, reason, ids
        )
        role = await asyncio.to_thread(AgentDir.of(self.home, name).role.read_text)
        resumes = resolve_agent(agent.agent, self.service.config.agent_settings(agent.agent))
        fresh = agent.task_id is None or not resumes.supports_resume
        prompt = build_prompt(agent, role, entries, first=fresh)
        if agent.task_id is not None:
            await bound_files(self.service, agent.task_id, self.settings.agent_files_mb)
        since = time.time()
        after_seq = 0
        if agent.task_id is not None:
            after_seq = await asyncio.to_thread(self.store.last_seq, agent.task_id)
        try:
            if self.before_turn is not None:
                await self.before_turn(agent)
            task_id = await self._start(agent, prompt, turn_id)
        except HalError as exc:
            # Like a crash: retried with backoff, and a start that keeps failing stops.
            why = f"its turn could not start: {exc.one_line()}"
            logger.warning("hive: %s: %s", name, why)
            await asyncio.to_thread(
                self._close, name, turn_id, None, "crashed", since, after_seq, ids, why
            )
            return
        await asyncio.to_thread(stats.set_turn_task, self.store, turn_id, task_id)
        task = await self._wait(task_id)
        await asyncio.to_thread(
            self._close, name, turn_id, task, watch.turn_result(task), since, after_seq, ids
        )
        self.self_wakes.turn_ended(name)

    async def _start(self, agent: AgentRecord, prompt: str, turn_id: int) -> str:
        """Start the turn's run under the scheduler; returns the task id."""
        if agent.task_id is None:
            request = run_request({
                "prompt": prompt, "repo": agent.repo, "ref": None, "agent": agent.agent,
                "provider": agent.provider, "process_manager": self.service.config.process_manager,
                "timeout_s": min(agent.policy.turn_timeout_s, self.settings.turn_timeout_s),
                "cwd": Path("/"), "branch": f"hal/agent/{agent.name}", "runner_pid": os.getpid(),
            }, wire=False)  # fmt: skip
            # Born this daemon's and on the agent's branch, not named so after: this
            # daemon's dispatch may start it at once. The turn names the task before its
            # row exists: a daemon killed before the agent's record names it leaves the
            # next one the task to adopt (see _finish_adopted), not a second one to make.
            named = partial(stats.set_turn_task, self.store, turn_id)
            task = await self.tasks.create(request, named=named)
            await asyncio.to_thread(update_agent, self.store, agent.name, task_id=task.id)
            return task.id
        # The turn's prompt is the task's own before it is queued: a run the scheduler starts
        # without this submission (a daemon restarted in between) gets it all the same.
        await asyncio.to_thread(self.store.update_task, agent.task_id, prompt=prompt)
        task = await self.tasks.resume(agent.task_id, prompt=prompt, detach=True)  # or adopted
        return task.id

    async def _wait(self, task_id: str) -> TaskRecord:
        """The task once it rests (retries of infrastructure failures included). A task
        left in flight with no runner here (the runner failed in hal) is interrupted."""
        orphaned: float | None = None
        while True:
            task = await asyncio.to_thread(self.store.get_task, task_id)
            running = self.tasks.running(task_id)
            if task.status not in ACTIVE and not running:
                return task
            if running or task.status == TaskStatus.QUEUED:
                orphaned = None
            elif orphaned is None:
                orphaned = time.monotonic()
            elif time.monotonic() - orphaned > ORPHAN_S:
                with contextlib.suppress(HalError):
                    await self.tasks.halt(
                        task_id, TaskStatus.INTERRUPTED, "its runner in hal serve failed"
                    )
            await asyncio.sleep(0.2)

    async def _finish_adopted(self, name: str) -> None:
        """A turn a dead daemon left open: follow its task to its end, then close it."""
        agent = await asyncio.to_thread(get_agent, self.store, name)
        row = await asyncio.to_thread(stats.open_turn, self.store, name)
        if row is None:
            await asyncio.to_thread(
                set_state, self.store, name, "sleeping", "no turn to finish", expect="running"
            )
            return
        task = await asyncio.to_thread(self._turn_task, row, agent.task_id)
        if task is None:
            # The dead daemon never queued this turn's run: nothing of it ran, so its mail
            # is not read (the next turn takes it), and the task's last run is not this one's.
            why = "its turn did not start: hal serve stopped first"
            await asyncio.to_thread(self._abandon, name, "crashed", why)
            return
        if agent.task_id is None:  # the first turn's task, made as the daemon died
            await asyncio.to_thread(update_agent, self.store, name, task_id=task.id)
        task_id = task.id
        if task.status in ACTIVE and not self.tasks.running(task_id):
            # Queued again (a retry) or adopted by recovery a moment from now: give it time.
            await asyncio.sleep(self.poll_s)
            task = await asyncio.to_thread(self.store.get_task, task_id)
            if task.status == TaskStatus.QUEUED:
                self.tasks.submit(task_id)
        task = await self._wait(task_id)
        await asyncio.to_thread(self._close, name, row.id, task, watch.turn_result(task),
                                row.started_at, 0, row.messages)  # fmt: skip

    def _turn_task(self, row: stats.TurnRow, task_id: str | None) -> TaskRecord | None:
        """The task an open turn runs as, or None when its run was never queued: no task
        yet (or not written), or the agent's task resting since before the turn began
        (queueing a run clears ``finished_at``)."""
        task_id = row.task_id or task_id
        if task_id is None:
            return None
        task = self.store.task_or_none(task_id)
        if task is None:
            return None
        ended = task.finished_at
        if task.status not in ACTIVE and ended is not None and ended < row.started_at:
            return None
        return task

    def _close(
        self, name: str, turn_id: int, task: TaskRecord | None, result: stats.TurnResult,
        since: float, after_seq: int, ids: list[str], why: str | None = None,
    ) -> None:  # fmt: skip
        """Record the turn, move the mailbox on, and put the agent back to sleep (or hand
        a crash to crash watch)."""
        events = Session(Path(task.session_dir)).events if task is not None else None
        measured = stats.measure(self.store, task, events, since, after_seq)
        threads = open_count(self.store, name)  # pending approvals, unanswered questions
        paths = AgentDir.of(self.home, name)
        if result not in ("crashed", "stopped"):
            # Taken before the turn's row closes: a daemon killed in between finds the turn
            # still open and closes it again (both steps repeat harmlessly), where a closed
            # row would leave the mail to be run again, or the cursor past unread mail.
            ledger = [str(e["id"]) for e in paths.entries()]
            taken = [ledger.index(i) for i in ids if i in ledger]
            if taken:
                paths.set_cursor(max(paths.cursor(), max(taken) + 1))
            # With those the agent took through its tools during the turn (on its row).
            mark(self.store, [*ids, *stats.turn_messages(self.store, turn_id)], "read")
        row = stats.finish_turn(self.store, turn_id, result, measured, threads)
        record_hive_event(
            self.store,
            TurnFinished(agent=name, turn_id=turn_id, result=result,
                         duration_ms=row.duration_ms or 0.0, wake_reason=row.wake_reason),
        )  # fmt: skip
        agent = get_agent(self.store, name)
        if agent.state != "running":
            return  # stopped by the operator (or a guard) meanwhile: it stays so
        if result == "crashed":
            why = why or (watch.crash_reason(task) if task is not None else None) or "crashed"
            verdict = watch.on_crash(self.store, agent, why, self.settings, expect="running")
            if verdict is not None and verdict.restart_in_s is not None:
                self._hold[name] = time.monotonic() + verdict.restart_in_s
            return
        # A turn that ended on its own ends a crash streak.
        reset: dict[str, Any] = {"crashes": 0, "last_crash_at": None} if agent.crashes else {}
        set_state(self.store, name, "sleeping", None, expect="running", **reset)

    def _tell_budget(self, name: str, why: str) -> None:
        if self._budget_told:
            return
        self._budget_told = True
        record_hive_event(self.store, HiveGuard(agent=name, guard="budget", detail=why))
        send(
            self.store, sender=SYSTEM, recipient=OPERATOR, kind="notice",
            body=f"{why}: no agent turn starts until it frees up or the budget is raised"
            " ([hive] daily_budget_usd / daily_budget_tokens).",
        )  # fmt: skip

    # -- operator actions --------------------------------------------------------------
    async def stop_agent(self, name: str, reason: str = "stopped by the operator") -> AgentRecord:
        """Stop an agent: it wakes for nothing until started; a turn in progress is stopped."""
        agent = await asyncio.to_thread(get_agent, self.store, name)
        await asyncio.to_thread(set_state, self.store, name, "stopped", reason)
        await self.release_warm(agent.task_id)
        if agent.task_id is not None:
            try:
                task = await asyncio.to_thread(self.store.get_task, agent.task_id)
            except TaskNotFound:  # a removal killed after the task went: `rm` again finishes
                return await asyncio.to_thread(get_agent, self.store, name)
            if task.status in ACTIVE:
                with contextlib.suppress(HalError):
                    await self.tasks.stop(agent.task_id)
        return await asyncio.to_thread(get_agent, self.store, name)

    async def start_agent(self, name: str) -> AgentRecord:
        """Let a stopped or crashed agent wake again (its crash count starts over); refused
        for one whose state directory is gone (a removal cut short): no turn could run."""
        agent = await asyncio.to_thread(get_agent, self.store, name)
        if not await asyncio.to_thread(AgentDir.of(self.home, name).root.is_dir):
            raise HiveError(
                f"agent {name} cannot start: its state directory is gone (its removal was"
                " cut short)",
                hint=f"`hal agent rm {name}` finishes removing it",
            )
        if agent.state in ("stopped", "crashed"):
            await asyncio.to_thread(
                set_state, self.store, name, "sleeping", "started by the operator",
                crashes=0, last_crash_at=None, loop_since=time.time(),
            )  # fmt: skip
        self.wake(name)
        return await asyncio.to_thread(get_agent, self.store, name)

    async def remove_agent(
        self, name: str, *, also: InTransaction | None = None, spare: str | None = None
    ) -> AgentRecord:
        """Stop an agent, remove its task and session, its state directory and its record
        (with ``also`` in the record's transaction); its open threads close, but for the
        proposal ``spare`` (the one removing it), and :attr:`after_remove` is called."""
        from hal9999.hive.agents import forget
        from hal9999.hive.threads import close_for_removed

        agent = await self.stop_agent(name, "being removed")
        if (running := self.turns.get(name)) is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(running), 30)
        await self.release_warm(agent.task_id)  # one a turn ending meanwhile kept
        if agent.task_id is not None:
            with contextlib.suppress(HalError):
                await self.tasks.remove(agent.task_id, force=True)
        # Its proposals, questions and reminders close first (askers get a sentinel answer).
        await asyncio.to_thread(close_for_removed, self.store, name, spare=spare)
        await asyncio.to_thread(forget, self.store, self.home, name, also=also)
        if self.after_remove is not None:
            await self.after_remove(agent)
        return agent
