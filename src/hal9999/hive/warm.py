"""Warm agents: an agent with ``policy.warm`` keeps its sandbox between turns.

The daemon's runs lease sandboxes from its warm pool (:class:`PoolSource`). This source
wraps that one: when a run of a warm agent's long-lived task ends on its own, its lease is
not handed back but held for the agent, and the agent's next turn (a resume of the same
task) gets that very sandbox again, with no create. A held sandbox stays ``leased`` in the
pool (it counts against the caps, no other task gets it) and in the store's sandbox records.

A held sandbox is released (destroyed: it carries what the agent left) when the agent was
idle longer than ``policy.warm_idle_s``, when it is stopped, crashed, removed or no longer
warm, and when the daemon stops. After a daemon crash (kill -9) nothing holds it: the next
daemon's recovery finds it in the store's records with no live task and destroys it as an
orphan; the agent's workspace and home are the task's session on the host, so nothing is
lost, and the next turn takes a new sandbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from hal9999.errors import ConfigError, HalError
from hal9999.hive.store import AgentPolicy, AgentRecord, agent_of_task, list_agents
from hal9999.hive.watch import crash_reason
from hal9999.hivesettings import HiveSettings
from hal9999.pool import Lease
from hal9999.pool.slots import pool_key
from hal9999.providers.base import Provider, Sandbox, WorkspaceAttach
from hal9999.spec import SandboxSpec
from hal9999.store import Store
from hal9999.tasks.context import TAKEN_AWAY
from hal9999.tasks.sandboxes import PoolSource

logger = logging.getLogger(__name__)

MAX_IDLE_S = 7 * 86400.0
"""The longest a warm agent's sandbox may be kept with no turn."""


@dataclass
class Held:
    """A sandbox kept for a warm agent between two turns."""

    agent: str
    lease: Lease
    spec: SandboxSpec
    """The spec of the run that used it last (the next run must need the same)."""
    since: float
    """When its last run ended (the agent's idle time counts from here)."""


def _same_shape(held: Held, spec: SandboxSpec) -> bool:
    """Whether the held sandbox fits ``spec``: a pooled one (host-side links) fits any spec
    of its pool key; one created for the task fits only the very same spec."""
    if held.lease.entry.slot is not None:
        return pool_key(spec) == held.lease.entry.key
    ignore = {"labels"}
    return spec.model_dump(exclude=ignore) == held.spec.model_dump(exclude=ignore)


def _sources(spec: SandboxSpec) -> tuple[object, ...]:
    """Where the spec's mounts come from on the host."""
    return (spec.workspace, *(b.source for b in spec.binds))


class WarmHolds:
    """The daemon's sandbox source: the pool's, plus sandboxes held for warm agents."""

    def __init__(self, inner: PoolSource, store: Store) -> None:
        self.inner = inner
        self.store = store
        self.held: dict[str, Held] = {}
        """Task id (a warm agent's long-lived task) -> the sandbox held for it."""
        self.specs: dict[str, SandboxSpec] = {}
        """Sandbox id -> the spec of the run using it now."""
        self.created = 0
        """Sandboxes runs got that were not held for them (for tests and status)."""
        self.reused = 0
        """Runs that got the sandbox held for them."""

    # -- SandboxSource -----------------------------------------------------------------
    async def acquire(self, provider: Provider, spec: SandboxSpec, task_id: str) -> Lease | None:
        """The sandbox held for ``task_id`` when it fits, else one from the pool."""
        held = self.held.pop(task_id, None)
        if held is not None:
            lease = await self._take_back(provider, held, spec)
            if lease is not None:
                self.reused += 1
                self.inner.adopted(lease)
                self.specs[lease.sandbox.id] = spec
                return lease
        lease = await self.inner.acquire(provider, spec, task_id)
        if lease is not None:
            self.created += 0 if lease.warm else 1
            self.specs[lease.sandbox.id] = spec
        return lease

    def holds(self, sandbox: Sandbox) -> bool:
        """Whether ``sandbox`` is leased from the pool (its row records it)."""
        return self.inner.holds(sandbox)

    async def release(self, sandbox: Sandbox, *, reuse: bool) -> bool:
        """Hold the sandbox for its warm agent when its run ended on its own; else hand
        it back to the pool."""
        spec = self.specs.pop(sandbox.id, None)
        lease = self.inner.leases.get(sandbox.id)
        if reuse and lease is not None and spec is not None and lease.entry.task_id:
            # On the loop: reads only, which never wait for a writer in WAL mode. A thread
            # hop here was one more wake-up of the loop at every run's end, on the way to
            # the answer of the run's follower, for nearly always no agent.
            agent = self._holder(lease.entry.task_id)
            if agent is not None:
                self.inner.leases.pop(sandbox.id, None)
                self.held[lease.entry.task_id] = Held(agent, lease, spec, time.time())
                logger.info("hive: %s keeps sandbox %s warm", agent, sandbox.id)
                return True
        return await self.inner.release(sandbox, reuse=reuse)

    # -- holding -----------------------------------------------------------------------
    def _holder(self, task_id: str) -> str | None:
        """The warm agent whose turn (of ``task_id``) just ended on its own, or None."""
        agent = agent_of_task(self.store, task_id)
        if agent is None or not agent.policy.warm or agent.state != "running":
            return None
        task = self.store.task_or_none(task_id)
        if task is None:
            return None
        if task.status in TAKEN_AWAY or crash_reason(task) is not None:
            return None  # stopped from outside, or crashed: the sandbox is not trusted on
        return agent.name

    async def _take_back(self, provider: Provider, held: Held, spec: SandboxSpec) -> Lease | None:
        """The held lease for a new run of its task, or None (released) when it does not
        fit or is gone."""
        entry = held.lease.entry
        if entry.id is not None and not entry.destroy_on_return and _same_shape(held, spec):
            try:
                if entry.slot is not None and _sources(spec) != _sources(held.spec):
                    # Mounts from elsewhere (never so for one task, but then it is right):
                    # re-point the links; a container restarts to resolve them again.
                    entry.slot.point(spec)
                    if isinstance(provider, WorkspaceAttach):
                        await provider.attach_workspace(entry.id, spec)
                sandbox = await provider.get(entry.id)
            except (HalError, OSError) as exc:
                logger.warning("hive: the warm sandbox of %s is unusable: %s", held.agent, exc)
            else:
                entry.last_used_at = time.time()
                return Lease(sandbox, True, entry)
        await self.inner.pool.release(held.lease, reuse=False)
        return None

    async def drop(self, task_id: str | None) -> bool:
        """Release (destroy) the sandbox held for ``task_id``; whether one was held."""
        held = self.held.pop(task_id, None) if task_id else None
        if held is None:
            return False
        logger.info("hive: releasing the warm sandbox of %s", held.agent)
        await self.inner.pool.release(held.lease, reuse=False)
        return True

    async def reap(self, now: float | None = None) -> list[str]:
        """Release the sandboxes of agents idle past their limit, or no longer warm
        (stopped, crashed, removed, policy changed); the agents' names."""
        if not self.held:
            return []
        now = time.time() if now is None else now
        agents = await asyncio.to_thread(list_agents, self.store)
        released = []
        for task_id, held in list(self.held.items()):
            agent = _agent_of(agents, task_id)
            keep = (
                agent is not None
                and agent.policy.warm
                and agent.state in ("sleeping", "running")
                and now - held.since <= agent.policy.warm_idle_s
            )
            if not keep and await self.drop(task_id):
                released.append(held.agent)
        return released

    async def release_all(self) -> int:
        """Release every held sandbox (the daemon stops); how many there were."""
        count = 0
        for task_id in list(self.held):
            count += await self.drop(task_id)
        return count


def _agent_of(agents: list[AgentRecord], task_id: str) -> AgentRecord | None:
    return next((a for a in agents if a.task_id == task_id), None)


def warm_policy(keep_warm: object, warm_idle_s: object, settings: HiveSettings) -> AgentPolicy:
    """An agent's policy from a spawn request's ``keep_warm`` and ``warm_idle_s`` (each
    None for the ``[hive]`` default); a clear error for a wrong type or range."""
    if keep_warm is None:
        keep_warm = settings.keep_warm
    if not isinstance(keep_warm, bool):
        raise ConfigError("keep_warm must be true or false")
    if warm_idle_s is None:
        warm_idle_s = settings.warm_idle_s
    if isinstance(warm_idle_s, bool) or not isinstance(warm_idle_s, int | float):
        raise ConfigError("warm_idle_s must be a number of seconds")
    if not 0 < warm_idle_s <= MAX_IDLE_S:
        raise ConfigError(
            f"warm_idle_s must be above 0 and at most {MAX_IDLE_S:g} (a week)",
            hint="e.g. --warm-idle 10m",
        )
    return AgentPolicy(warm=keep_warm, warm_idle_s=float(warm_idle_s))
