"""The operator's hive API in ``hal serve``: agents, mail, open threads, statistics,
retention and hive events. The daemon's hive routes (and the dashboard through them) call
it; none of them touches the store. Blocking store work runs in a thread, off the loop.
Everything here is the operator's: a message or an answer made through it is from
``operator``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from hal9999.hive import agents, approvals, broker, questions, stats
from hal9999.hive.broker import OPERATOR, Message
from hal9999.hive.reminders import list_reminders
from hal9999.hive.retention import vacuum
from hal9999.hive.store import (
    AgentRecord,
    check_name,
    get_agent,
    hive_events_after,
    list_agents,
)
from hal9999.hive.threads import Approval, OpenThreads, Question, Reminder, open_threads
from hal9999.hive.warm import warm_policy
from hal9999.tasks.pages import PAGE

if TYPE_CHECKING:
    from hal9999.config import HalConfig
    from hal9999.events.bus import EventBus
    from hal9999.events.hive import HiveEvent
    from hal9999.hive.turns import HiveLoop
    from hal9999.hivesettings import HiveSettings
    from hal9999.store import Store


class HiveAPI:
    """What the operator does with the hive of one daemon."""

    def __init__(
        self,
        store: Store,
        config: HalConfig,
        settings: HiveSettings,
        loop: HiveLoop,
        bus: EventBus,
    ) -> None:
        self.store = store
        self.config = config
        self.settings = settings
        self.loop = loop
        """The turn loop: an agent's stop, start and removal go through it."""
        self.bus = bus
        self.executors: dict[str, approvals.Executor] = {
            "spawn": self._spawn_approved,
            "destroy": self._destroy_approved,
        }
        """What approving a ``spawn`` or ``destroy`` proposal does: it acts through this hive."""

    async def _spawn_approved(self, approval: Approval, settle: approvals.Settle) -> None:
        data = approval.payload
        name = check_name(str(data.get("name", "")))
        agent = str(data.get("agent") or self.config.default_agent)
        await agents.spawn(
            self.store, self.config, name, agent=agent,
            provider=str(data.get("provider") or self.config.default_provider),
            repo=data.get("repo"), role=data.get("role"),
            also=lambda conn, recorded: settle(conn, recorded, {"spawned": name, "agent": agent}),
        )  # fmt: skip

    async def _destroy_approved(self, approval: Approval, settle: approvals.Settle) -> None:
        name = check_name(str(approval.payload.get("name", "")))
        await self.loop.remove_agent(
            name, spare=approval.id,
            also=lambda conn, recorded: settle(conn, recorded, {"destroyed": name}),
        )  # fmt: skip

    # -- agents --------------------------------------------------------------------------
    async def spawn(
        self,
        name: str,
        *,
        agent: str | None = None,
        provider: str | None = None,
        repo: str | None = None,
        role: str | None = None,
        kind: Literal["agent", "manager"] = "agent",
        keep_warm: Any = None,
        warm_idle_s: Any = None,
    ) -> AgentRecord:
        """Make a named agent (asleep until it has mail); the config's defaults fill in."""
        return await agents.spawn(
            self.store, self.config, name,
            agent=agent or self.config.default_agent,
            provider=provider or self.config.default_provider,
            repo=repo, role=role, kind=kind,
            policy=warm_policy(keep_warm, warm_idle_s, self.settings),
        )  # fmt: skip

    async def agents(self) -> list[AgentRecord]:
        """Every agent of the hive."""
        return await asyncio.to_thread(list_agents, self.store)

    async def agent(self, name: str) -> dict[str, Any]:
        """One agent, whether a turn of it runs, its unread mail and its recent turns."""
        record = await asyncio.to_thread(get_agent, self.store, name)
        recent = await asyncio.to_thread(stats.turns, self.store, name, limit=5)
        waiting = await asyncio.to_thread(broker.inbox, self.store, name)
        return {
            **record.model_dump(mode="json"),
            "turn_running": name in self.loop.turns,
            "unread": len(waiting),
            "recent_turns": [t.model_dump(mode="json") for t in recent],
        }

    async def stop(self, name: str) -> AgentRecord:
        """Stop an agent (a turn in progress is stopped)."""
        return await self.loop.stop_agent(name)

    async def start(self, name: str) -> AgentRecord:
        """Let a stopped or crashed agent wake again."""
        return await self.loop.start_agent(name)

    async def remove(self, name: str) -> AgentRecord:
        """Remove an agent, its task and its files."""
        return await self.loop.remove_agent(name)

    async def stats(self, name: str) -> Any:
        """Turn statistics of an agent."""
        await asyncio.to_thread(get_agent, self.store, name)
        return await asyncio.to_thread(stats.summary, self.store, name)

    # -- mail ----------------------------------------------------------------------------
    async def send(self, to: str, body: str, *, key: str | None = None) -> Message:
        """Send a message as the operator (``key``: the same send again sends nothing)."""
        return await asyncio.to_thread(
            broker.send, self.store, sender=OPERATOR, recipient=to, body=body, key=key
        )

    async def inbox(
        self, name: str = OPERATOR, *, every: bool = False, mark: bool = False
    ) -> list[Message]:
        """A mailbox (unread only unless ``every``); ``mark`` marks the operator's read."""
        if name != OPERATOR:
            await asyncio.to_thread(get_agent, self.store, name)
        found = await asyncio.to_thread(broker.inbox, self.store, name, include_read=every)
        if name == OPERATOR and mark:
            unread = [m.id for m in found if m.state != "read"]
            await asyncio.to_thread(broker.mark, self.store, unread, "read")
        return found

    async def mark_read(self, ids: list[str]) -> list[str]:
        """Mark those of the operator's unread messages read that ``ids`` lists."""
        wanted = set(ids)
        unread = await asyncio.to_thread(broker.inbox, self.store, OPERATOR)
        chosen = [m.id for m in unread if m.id in wanted]
        await asyncio.to_thread(broker.mark, self.store, chosen, "read")
        return chosen

    async def drop_message(self, name: str, message_id: str) -> Message:
        """Take an unread message out of agent ``name``'s mailbox, so no turn gets it;
        refused while a turn of it that already took the message runs (stop it first)."""
        await asyncio.to_thread(get_agent, self.store, name)
        return await asyncio.to_thread(
            partial(agents.drop_mail, turn_running=name in self.loop.turns),
            self.store, self.config.home, name, message_id,
        )  # fmt: skip

    async def reminders(self, name: str | None = None) -> list[Reminder]:
        """Every reminder (of agent ``name``)."""
        if name is not None:
            await asyncio.to_thread(get_agent, self.store, name)
        return await asyncio.to_thread(list_reminders, self.store, name, pending_only=False)

    # -- open threads ----------------------------------------------------------------------
    async def approvals(self, *, every: bool = False) -> list[Approval]:
        """Pending proposals (``every``: resolved ones too)."""
        state = None if every else "pending"
        return await asyncio.to_thread(approvals.list_approvals, self.store, state=state)

    async def approval(self, approval_id: str) -> dict[str, Any]:
        """A proposal; for an apply, its commits and diff."""
        return await approvals.show(self.store, approval_id)

    async def approve(self, approval_id: str, *, reason: str | None) -> Approval:
        """Approve a proposal and carry it out (the proposer is told)."""
        return await approvals.approve(
            self.store, approval_id, reason=reason, executors=self.executors
        )

    async def deny(self, approval_id: str, *, reason: str) -> Approval:
        """Deny a proposal; the reason reaches the proposer."""
        return await asyncio.to_thread(approvals.deny, self.store, approval_id, reason=reason)

    async def questions(self, *, every: bool = False) -> list[Question]:
        """Unanswered questions (``every``: answered ones too)."""
        return await asyncio.to_thread(questions.list_questions, self.store, open_only=not every)

    async def answer(self, question_id: str, text: str) -> Question:
        """Answer a question as the operator."""
        return await asyncio.to_thread(
            questions.answer, self.store, question_id, text, answerer=OPERATOR
        )

    async def threads(self, agent: str | None = None) -> OpenThreads:
        """Open threads (of one agent): pending proposals and unanswered questions."""
        if agent not in (None, OPERATOR):  # a misspelt name is not an agent with no threads
            await asyncio.to_thread(get_agent, self.store, agent)
        return await asyncio.to_thread(open_threads, self.store, agent)

    # -- upkeep and events -------------------------------------------------------------------
    async def vacuum(self, *, dry_run: bool = False) -> Any:
        """Apply the hive's retention (``dry_run``: only say what would go)."""
        return await asyncio.to_thread(
            vacuum, self.store, self.settings, home=self.config.home, dry_run=dry_run
        )

    async def events(self, *, after: int, wait: float) -> tuple[list[HiveEvent], int]:
        """Hive events after ``after`` (waiting up to ``wait`` seconds for one), and the
        last ``gseq`` given."""
        subscription = self.bus.subscribe_hive()  # first, then read: nothing falls between
        try:
            deadline = time.monotonic() + wait
            while True:
                page: list[HiveEvent] = await asyncio.to_thread(
                    hive_events_after, self.store, after, limit=PAGE
                )
                left = deadline - time.monotonic()
                if page or left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        while (event := await subscription.get()) is not None:
                            if event.gseq > after:
                                break
        finally:
            subscription.close()
        return page, page[-1].gseq if page else after
