"""Lending a pool's sandboxes: claim one for a task, take it back (reset or destroyed).

:class:`PoolLending` holds a warm pool's state and caps; :class:`.WarmPool` adds keeping
sandboxes warm, reaping and draining them, and taking over a previous daemon's.

Every decision (take an idle sandbox, reserve room to create one, evict an idle one of
another key) is made under one :class:`asyncio.Condition` with no ``await`` in between, so a
sandbox is never handed to two claimers and the caps are never exceeded: room is reserved
before a sandbox is created, and given back only once a sandbox is destroyed. Waiters sleep
on the condition and are woken whenever room or an idle sandbox appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hal9999.errors import ConfigError, HalError, ProviderError
from hal9999.pool.settings import ProviderSettings, env_prefix, policy_of
from hal9999.pool.slots import Slot, SlotDir, pool_key
from hal9999.providers.base import (
    Provider,
    Sandbox,
    SandboxPrime,
    SandboxReset,
    WorkspaceAttach,
)
from hal9999.spec import SandboxSpec
from hal9999.store import SandboxRow, Store
from hal9999.store.records import SandboxState

logger = logging.getLogger(__name__)

RESET_GRACE_S = 0.02
"""How long a sandbox a run gave back waits before its reset starts when no claim waits
for one: the run's end is answered first (the reset's first steps, the keeper's
kill and the scan of every host process for the sandbox's marker, would run alongside that answer
and slow it). A claim of its key that finds no idle sandbox starts it at
once."""


@dataclass(eq=False)
class Entry:
    """One sandbox the pool tracks (possibly still being created)."""

    provider: str
    key: str
    template: SandboxSpec
    slot: Slot | None
    state: SandboxState
    id: str | None = None
    task_id: str | None = None
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    destroy_on_return: bool = False
    ready: Sandbox | None = None
    """The handle its last reset made, for the claim that takes it next (see :meth:`_reset`)."""


@dataclass
class Lease:
    """A sandbox handed to one claimer until :meth:`PoolLending.release`."""

    sandbox: Sandbox
    warm: bool
    """Whether it came ready from the pool rather than being created for this claim."""
    entry: Entry


class PoolLending:
    """Sandboxes per pool key, created up to per-provider and per-key caps, lent to one
    claimer at a time."""

    def __init__(
        self,
        *,
        providers: Callable[[str], Provider],
        settings: Callable[[str], ProviderSettings],
        slots: SlotDir,
        store: Store | None = None,
    ) -> None:
        self.providers = providers
        self.settings = settings
        self.slots = slots
        self.store = store
        self.entries: list[Entry] = []
        self.templates: dict[str, SandboxSpec] = {}
        """Every key seen, with a spec of its shape (for keeping ``key_min_warm`` ready)."""
        self.default_keys: dict[str, str] = {}
        """Provider -> the key of its default spec (kept at ``min_warm``)."""
        self.paused = False
        """Set by :meth:`drain`: nothing is kept warm and returned sandboxes are destroyed."""
        self._cond = asyncio.Condition()
        self._waiting = 0
        """Claims waiting for a sandbox to come free (a reset then hands it over unprimed)."""
        self._writes = asyncio.Lock()
        """Orders the sandbox records' writes, which run in threads (off the event loop)."""
        self._owed: dict[Entry, None] = {}
        """Entries whose row is to be written: the next write takes them all (in order)."""
        self._background: set[asyncio.Task[Any]] = set()
        self._deferred: dict[Entry, asyncio.Event] = {}
        """Sandboxes given back whose reset waits out :data:`RESET_GRACE_S`; set: start it."""
        self.own_warm: set[str] = slots.own_warm()
        """Providers whose warm sandboxes they keep themselves (see
        :class:`~hal9999.providers.base.OwnWarmPool`), kept on disk: their warm sandboxes
        outlive the daemon that made them."""

    # -- bookkeeping (never awaits between a check and its update) ------------------------
    def count(self, provider: str, key: str | None = None) -> int:
        """Sandboxes of ``provider`` (and ``key``) in any state, room reserved included."""
        return sum(
            1 for e in self.entries if e.provider == provider and (key is None or e.key == key)
        )

    def idle(self, key: str) -> list[Entry]:
        """Idle sandboxes of ``key``, least recently used first."""
        found = [e for e in self.entries if e.key == key and e.state == "idle"]
        return sorted(found, key=lambda e: e.last_used_at)

    def _has_room(self, provider: str, key: str) -> bool:
        settings = self.settings(provider)
        key_cap = settings.key_max_size if settings.key_max_size is not None else settings.max_size
        return self.count(provider) < settings.max_size and self.count(provider, key) < key_cap

    def poolable(self, provider: Provider) -> bool:
        """Whether the provider's sandboxes can be handed from one task to the next: it
        attaches workspaces itself, or resolves its mounts on the host per command."""
        if isinstance(provider, WorkspaceAttach):
            return provider.attaches_workspaces()
        caps = provider.capabilities
        return caps.host_launch or caps.isolation == "fake"

    def check_policy(self, name: str, provider: Provider) -> None:
        """Refuse a ``reset`` policy for a provider that cannot reset safely (a VM keeps its
        disk and kernel, ``local`` shares the host): its sandboxes are destroyed after each
        task, and a setting saying otherwise is a mistake to report, not to ignore."""
        if policy_of(name, self.settings(name)) != "reset":
            return
        if isinstance(provider, SandboxReset) and provider.resets_safely():
            return
        raise ConfigError(
            f"pool policy 'reset' is not safe for provider {name!r}: a reused sandbox would "
            "keep what the previous task left",
            hint=f'set policy = "destroy" under [pool.{name}] (or {env_prefix(name)}POOL_POLICY)',
        )

    async def _record(self, entry: Entry, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(entry, name, value)
        store = self.store
        if store is None or entry.id is None:
            return
        # The rows are built under the lock, so the last write carries the entry's latest
        # state; a thread does the write, so another process's write lock stalls no loop.
        # Rows owed while a write runs go in the next one, one transaction and one thread
        # hop for them all (two rows a task, at 16 tasks at once mostly waiting
        # here for each other): whoever takes the lock first writes them; an entry taken
        # by another's write is written once the lock is free again.
        self._owed[entry] = None
        async with self._writes:
            if entry not in self._owed:
                return
            entries, self._owed = self._owed, {}
            rows = [
                SandboxRow(
                    provider=owed.provider,
                    id=owed.id,
                    pool_key=owed.key,
                    state=owed.state,
                    task_id=owed.task_id,
                    owner_pid=os.getpid(),
                    created_at=owed.created_at,
                    last_used_at=owed.last_used_at,
                )
                for owed in entries
                # forgotten meanwhile: do not bring the row back
                if owed.state != "gone" and owed.id is not None
            ]
            if rows:
                await asyncio.to_thread(store.put_sandboxes, rows)

    async def _record_behind(self, entry: Entry) -> None:
        """:meth:`_record` of the entry as it is by then, awaited by nobody: no claim waits for
        a row (under load a write waits long for the lock and a thread, and a
        reset writing its row under ``_cond`` held every claim that long). The row is only
        read by a later daemon's recovery, which goes by provider and id."""
        try:
            await self._record(entry)
        except Exception:  # nobody awaits it; the next write of the entry carries it
            logger.exception("recording sandbox %s failed", entry.id)

    # -- claim and release ---------------------------------------------------------------
    async def claim(
        self,
        spec: SandboxSpec,
        *,
        task_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline over many waits
    ) -> Lease:
        """A sandbox for ``spec``: an idle one of its key, else a new one once there is room."""
        provider = self.providers(spec.provider)
        self.check_policy(spec.provider, provider)
        pooled = self.poolable(provider)
        key = pool_key(spec)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._cond:
            self.templates.setdefault(key, spec)
            while True:
                idle = self.idle(key) if pooled else []
                if idle:
                    entry = idle[-1]  # the most recently used: its caches are warmest
                    entry.state, entry.task_id, warm = "leased", task_id, True
                    break
                for deferred, start in self._deferred.items():
                    if deferred.key == key:  # wanted now: reset without the grace
                        start.set()
                if self._has_room(spec.provider, key):
                    slot = self.slots.new() if pooled else None
                    entry = Entry(spec.provider, key, spec, slot, "creating", task_id=task_id)
                    self.entries.append(entry)
                    warm = False
                    break
                self._evict_one(spec.provider, key)
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise ProviderError(
                        f"no {spec.provider} sandbox became free within {timeout:g}s",
                        hint=f"raise HAL_{spec.provider.upper()}_MAX_POOL_SIZE",
                    )
                self._waiting += 1
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), remaining)
                finally:
                    self._waiting -= 1
        try:
            sandbox = await (self._hand_over(entry, spec) if warm else self._create(entry, spec))
        except BaseException:
            await self._destroy(entry)
            raise
        return Lease(sandbox, warm, entry)

    async def _create(self, entry: Entry, spec: SandboxSpec) -> Sandbox:
        provider = self.providers(entry.provider)
        if entry.slot is None:
            sandbox = await provider.create(spec)
        else:
            entry.slot.point(spec)
            sandbox = await provider.create(entry.slot.spec_for(spec, entry.key))
        await self._record(entry, id=sandbox.id, state="leased", last_used_at=time.time())
        return sandbox

    async def _hand_over(self, entry: Entry, spec: SandboxSpec) -> Sandbox:
        assert entry.id is not None
        provider = self.providers(entry.provider)
        if entry.slot is not None:
            entry.slot.point(spec)  # host-side paths of the sandbox go through the links
        if isinstance(provider, WorkspaceAttach):
            await provider.attach_workspace(entry.id, spec)
        sandbox, entry.ready = entry.ready, None
        if sandbox is None:
            sandbox = await provider.get(entry.id)
        entry.last_used_at = time.time()  # state and task were set by the claim
        self._spawn(self._record_behind(entry))
        return sandbox

    async def release(self, lease: Lease, *, reuse: bool = True, wait: bool = True) -> None:
        """Return a sandbox: reset for the next task, or destroy it, per provider policy.

        ``wait=False`` returns once the sandbox is the pool's again (``resetting``: no claim
        can take it) and resets it in the background: a run's end, and whoever
        waits for it, does not wait for the reset. A destroy is always awaited
        (a task taken away must not outlive its sandbox)."""
        entry = lease.entry
        if entry.state not in ("leased", "creating"):
            return
        settings = self.settings(entry.provider)
        keep = (
            reuse
            and entry.slot is not None
            and not self.paused
            and not entry.destroy_on_return
            and policy_of(entry.provider, settings) == "reset"
        )
        if keep:
            # Not written to the store: its row (read only by a later daemon's recovery,
            # which goes by provider and id, not by state) is written once it is idle.
            entry.state, entry.task_id = "resetting", None
            if wait:
                await self._reset_or_destroy(entry)
            else:
                self._spawn(self._reset_or_destroy(entry, grace=True))
            return
        await self._destroy(entry)

    async def _reset_or_destroy(self, entry: Entry, *, grace: bool = False) -> None:
        """Reset a returned sandbox and make it idle; destroy it when that fails, or when the
        pool was drained meanwhile. With ``grace``, after :data:`RESET_GRACE_S` unless a
        claim wants it sooner."""
        if grace and not self._waiting:
            start = self._deferred[entry] = asyncio.Event()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RESET_GRACE_S):
                        await start.wait()
            finally:
                del self._deferred[entry]
        try:
            await self._reset(entry)
        except (HalError, OSError) as exc:
            logger.warning("resetting sandbox %s failed, destroying it: %s", entry.id, exc)
        except Exception:  # a background reset has nobody to raise to
            logger.exception("resetting sandbox %s failed, destroying it", entry.id)
        else:
            async with self._cond:  # idle and claimable at once; its row is written after
                idle = not self.paused
                if idle:
                    entry.state, entry.last_used_at = "idle", time.time()
                    self._cond.notify_all()
            if idle:
                await self._record_behind(entry)
                return
        await self._destroy(entry)

    async def _reset(self, entry: Entry) -> None:
        assert entry.id is not None and entry.slot is not None
        provider = self.providers(entry.provider)
        if not isinstance(provider, SandboxReset) or not provider.resets_safely():
            raise ProviderError(f"provider {entry.provider!r} cannot reset a sandbox safely")
        await provider.stop(entry.id)  # every process the task left behind
        entry.slot.clear(entry.template)
        # The provider swaps the sandbox's own dirs from the host and verifies the result; a
        # wipe from inside cannot pass the 000 and 555 directories a task may leave.
        ready = await provider.reset(entry.id)
        # Handed to the next claim as the reset made it: a `get` would read and validate its
        # record again and build the same handle. Not where a claim attaches the
        # workspace, which changes the sandbox.
        entry.ready = None if isinstance(provider, WorkspaceAttach) else ready
        if isinstance(provider, SandboxPrime) and not self._waiting:
            # Primed again (bwrap: a fresh keeper) while nobody waits for it; a claim that
            # waits takes it as it is: under a queue, a prime would cost more than it saves.
            try:
                await provider.prime(entry.id)
            except (HalError, OSError) as exc:
                logger.warning("priming sandbox %s after its reset failed: %s", entry.id, exc)

    async def _destroy(self, entry: Entry) -> None:
        """Destroy the sandbox (if it was created) and give its room back."""
        if entry.state == "gone":
            return
        await self._record(entry, state="destroying")
        try:
            if entry.id is not None:
                await self.providers(entry.provider).destroy(entry.id)
        except (HalError, OSError) as exc:
            logger.warning("destroying sandbox %s failed: %s", entry.id, exc)
        finally:
            if entry.slot is not None:
                entry.slot.remove()
            async with self._cond:
                await self._forget(entry)

    async def _forget(self, entry: Entry) -> None:
        """Drop ``entry`` and its row, and wake whoever waits for room (under ``_cond``)."""
        entry.state = "gone"
        if entry in self.entries:
            self.entries.remove(entry)
        if self.store is not None and entry.id is not None:
            async with self._writes:
                await asyncio.to_thread(self.store.delete_sandbox, entry.provider, entry.id)
        self._cond.notify_all()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _evict_one(self, provider: str, key: str) -> None:
        """Free room for ``key`` by destroying the least recently used idle sandbox of
        another key of the same provider (in the background; waiters wake when it is gone)."""
        victims = [
            e for e in self.entries if e.provider == provider and e.key != key and e.state == "idle"
        ]
        if victims:
            victim = min(victims, key=lambda e: e.last_used_at)
            victim.state = "destroying"
            self._spawn(self._destroy(victim))
