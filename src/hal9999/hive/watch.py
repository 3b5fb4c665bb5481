"""Crash watch: what happens when an agent's sandbox or process goes away without an
operator action.

A turn whose task ends interrupted, killed by a signal (exit status 128 + n) or with an
infrastructure error is a crash (a stop by the operator is not: the agent is ``stopped``
then). Each crash records an ``agent_crashed`` event and tells the manager (the operator
when there is no manager, or the manager itself crashed). The agent is restarted (its turn
runs again over the same mailbox entries) after a backoff that doubles with each crash in
the window; ``crash_loop`` crashes within ``crash_window_s`` stop that: the agent is left
``crashed`` and the operator is told, until ``hal agent start NAME``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from hal9999.events.hive import AgentCrashed, HiveEvent
from hal9999.hive.agents import set_state
from hal9999.hive.broker import OPERATOR, SYSTEM, Message, commit, prepare, wake
from hal9999.hive.stats import TurnResult
from hal9999.hive.store import AgentRecord, insert_hive_event, list_agents
from hal9999.hivesettings import HiveSettings
from hal9999.store import Store, TaskRecord
from hal9999.tasks.retry import TRANSIENT_CODES
from hal9999.tasks.state import TaskStatus


def turn_result(task: TaskRecord) -> TurnResult:
    """How a turn whose task ended as ``task`` is recorded on its row."""
    if task.status == TaskStatus.SUCCEEDED:
        return "ok"
    if task.status == TaskStatus.TIMED_OUT:
        return "timeout"
    if task.status in (TaskStatus.STOPPED, TaskStatus.CANCELLED):
        return "stopped"
    if task.error_code == "budget_exceeded":
        return "budget"
    if crash_reason(task) is not None:
        return "crashed"
    return "error"


def crash_reason(task: TaskRecord) -> str | None:
    """Why a turn's task counts as a crash (None when it ended on its own)."""
    if task.status == TaskStatus.INTERRUPTED:
        return f"the run was interrupted: {task.error_message or 'its hal process died'}"
    if task.status != TaskStatus.FAILED:
        return None
    if task.exit_code is not None and task.exit_code >= 128:
        return f"the agent was killed by signal {task.exit_code - 128}"
    if task.error_code in TRANSIENT_CODES:
        return f"its sandbox failed: {task.error_message or task.error_code}"
    if task.exit_code is None and task.error_code != "budget_exceeded":
        # The agent never ran (not installed, the checkout failed...): its mail must not be
        # taken as read; retried, and a failure that stays stops as a crash loop.
        return f"the turn failed before the agent ran: {task.error_message or task.error_code}"
    return None


@dataclass
class CrashVerdict:
    """What crash watch decided."""

    crashes: int
    restart_in_s: float | None
    """None: not restarted (crash loop, or the policy says never)."""


def backoff_s(crashes: int, settings: HiveSettings) -> float:
    """How long crash watch waits before restarting an agent after its ``crashes``-th crash."""
    return float(min(settings.crash_backoff_max_s, settings.crash_backoff_s * 2 ** (crashes - 1)))


def restart_at(agent: AgentRecord, settings: HiveSettings) -> float | None:
    """The wall-clock time before which a crashed ``agent`` is not restarted, from its stored
    crash count and last crash (None when no backoff holds it). A restarted daemon waits out
    what is left of it: kept in memory only, the backoff gave a crash-looping agent one turn
    at once per restart."""
    if agent.crashes < 1 or agent.last_crash_at is None:
        return None
    return agent.last_crash_at + backoff_s(agent.crashes, settings)


def stored_holds(store: Store, settings: HiveSettings) -> dict[str, float]:
    """Agent name -> monotonic time before which crash watch's backoff holds it, for the
    agents the store says one still holds (see :func:`restart_at`)."""
    holds: dict[str, float] = {}
    now, mono = time.time(), time.monotonic()
    for agent in list_agents(store):
        until = restart_at(agent, settings)
        if until is not None and until > now:
            holds[agent.name] = mono + (until - now)
    return holds


def manager_of(store: Store, crashed: str) -> str:
    """Who hears of a crash: the manager agent, else (or when it crashed) the operator."""
    for agent in list_agents(store):
        if agent.kind == "manager" and agent.name != crashed and agent.state != "crashed":
            return agent.name
    return OPERATOR


def on_crash(
    store: Store, agent: AgentRecord, detail: str, settings: HiveSettings, *,
    expect: str | None = None,
) -> CrashVerdict | None:  # fmt: skip
    """Record a crash of ``agent``, tell its manager, and decide on a restart; with
    ``expect``, only if the agent is still in that state (else None: nothing recorded)."""
    now = time.time()
    recent = agent.last_crash_at is not None and now - agent.last_crash_at < settings.crash_window_s
    crashes = agent.crashes + 1 if recent else 1
    if crashes >= settings.crash_loop or agent.policy.restart == "never":
        why = (
            f"crash loop: {crashes} crashes within {settings.crash_window_s:g} s"
            if crashes >= settings.crash_loop
            else "its restart policy is never"
        )
        text = (
            f"agent {agent.name} crashed ({detail}) and is NOT restarted: {why}."
            f" Look at `hal agent logs {agent.name}`; `hal agent start {agent.name}` restarts it."
        )
        told = [_notice(store, whom, text)
                for whom in dict.fromkeys((manager_of(store, agent.name), OPERATOR))]  # fmt: skip
        done = _record(store, agent.name, "crashed", f"{detail}; not restarted ({why})", crashes,
                       now, AgentCrashed(agent=agent.name, detail=detail, crashes=crashes,
                                         restart_in_s=None), told, expect)  # fmt: skip
        return CrashVerdict(crashes, None) if done else None
    delay = backoff_s(crashes, settings)
    text = (
        f"agent {agent.name} crashed ({detail}); crash watch restarts it in {delay:g} s"
        f" (crash {crashes} of {settings.crash_loop} allowed within"
        f" {settings.crash_window_s:g} s)."
    )
    done = _record(store, agent.name, "sleeping", f"crashed ({detail}); restarting in {delay:g} s",
                   crashes, now, AgentCrashed(agent=agent.name, detail=detail, crashes=crashes,
                                              restart_in_s=delay),
                   [_notice(store, manager_of(store, agent.name), text)], expect)  # fmt: skip
    return CrashVerdict(crashes, delay) if done else None


def _notice(store: Store, whom: str, text: str) -> Message:
    return prepare(store, sender=SYSTEM, recipient=whom, body=text, kind="notice")


def _record(store: Store, name: str, state: str, detail: str, crashes: int, now: float,
            event: AgentCrashed, told: list[Message], expect: str | None) -> bool:  # fmt: skip
    """The agent's new state, its crash event and the notices of it, in one transaction: a
    process killed at any moment never leaves an agent crashed that nobody was told of.
    False (nothing written) when the agent is no longer in the state ``expect``."""

    def tell(conn: sqlite3.Connection, recorded: list[HiveEvent]) -> None:
        recorded.append(insert_hive_event(conn, event))
        for message in told:
            commit(conn, recorded, message)

    moved = set_state(store, name, state, detail, expect=expect, crashes=crashes,
                      last_crash_at=now, also=tell)  # fmt: skip
    if moved is None:
        return False
    for message in told:
        wake(message.recipient)
    return True
