"""The warm pool: sandboxes kept ready per pool key, handed to one task at a time
(:mod:`.lending`), kept warm up to a floor, reaped when idle, drained, and taken over from a
previous daemon at a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from hal9999.errors import ConfigError, HalError, ProviderError
from hal9999.pool import report
from hal9999.pool.lending import Entry, Lease, PoolLending
from hal9999.pool.slots import pool_key
from hal9999.providers.base import OwnWarmPool, SandboxPrime
from hal9999.spec import SandboxSpec

__all__ = ["Entry", "Lease", "WarmPool"]


class WarmPool(PoolLending):
    """Sandboxes per pool key, created up to per-provider and per-key caps."""

    # -- keeping warm ------------------------------------------------------------------
    async def warm(self, spec: SandboxSpec, count: int) -> int:
        """Create up to ``count`` idle sandboxes of ``spec``'s key, within the caps."""
        provider = self.providers(spec.provider)
        if isinstance(provider, OwnWarmPool):  # its warm sandboxes are the provider's
            if spec.provider not in self.own_warm:
                self.own_warm.add(spec.provider)
                await asyncio.to_thread(self.slots.set_own_warm, self.own_warm)
            self.paused = False
            return await provider.fill_warm(count)
        if not self.poolable(provider):
            raise ProviderError(
                f"provider {spec.provider!r} cannot hand a sandbox from one task to the next",
                hint="its sandboxes are created per task",
            )
        key = pool_key(spec)
        planned: list[Entry] = []
        async with self._cond:
            self.templates.setdefault(key, spec)
            self.paused = False
            while len(planned) < count and self._has_room(spec.provider, key):
                entry = Entry(spec.provider, key, spec, self.slots.new(), "creating")
                self.entries.append(entry)
                planned.append(entry)
        results = await asyncio.gather(
            *(self._create_idle(e) for e in planned), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and len(failed) == len(results):
            raise ProviderError(f"could not create warm {spec.provider} sandboxes: {failed[0]}")
        return len(results) - len(failed)

    async def _create_idle(self, entry: Entry) -> None:
        assert entry.slot is not None
        try:
            entry.slot.clear(entry.template)
            spec = entry.slot.spec_for(entry.template, entry.key)
            provider = self.providers(entry.provider)
            sandbox = await provider.create(spec)
            entry.id = sandbox.id  # destroyed below if priming fails
            if isinstance(provider, SandboxPrime):
                await provider.prime(sandbox.id)
        except BaseException:
            await self._destroy(entry)
            raise
        async with self._cond:  # claimable at once; its row is written after
            entry.state, entry.last_used_at = "idle", time.time()
            self._cond.notify_all()
        await self._record(entry)

    def warm_floor(self, key: str) -> int:
        """How many idle sandboxes of ``key`` the keeper keeps."""
        provider = key.split(":", 1)[0]
        settings = self.settings(provider)
        floor = settings.key_min_warm
        if self.default_keys.get(provider) == key:
            floor = max(floor, settings.min_warm)
        return 0 if self.paused else floor

    async def keep_warm(self, defaults: dict[str, SandboxSpec]) -> None:
        """Top every key up to its warm floor (``defaults``: provider -> default spec)."""
        for name, spec in defaults.items():
            self.default_keys[name] = pool_key(spec)
            self.templates.setdefault(self.default_keys[name], spec)
        for key, spec in list(self.templates.items()):
            floor = self.warm_floor(key)
            ready = sum(1 for e in self.entries if e.key == key and e.state in ("idle", "creating"))
            if floor > ready:
                with contextlib.suppress(HalError, OSError):
                    await self.warm(spec, floor - ready)

    async def reap_idle(self, now: float | None = None) -> list[str]:
        """Destroy idle sandboxes past their idle timeout, above the warm floor; their ids."""
        now = time.time() if now is None else now
        doomed: list[Entry] = []
        async with self._cond:
            for key in {e.key for e in self.entries}:
                provider = key.split(":", 1)[0]
                settings = self.settings(provider)
                idle = self.idle(key)
                spare = len(idle) - self.warm_floor(key)
                for entry in idle:  # oldest first
                    if spare <= 0:
                        break
                    if now - entry.last_used_at > settings.idle_timeout_s:
                        entry.state = "destroying"
                        doomed.append(entry)
                        spare -= 1
        await asyncio.gather(*(self._destroy(e) for e in doomed))
        return [e.id for e in doomed if e.id is not None]

    async def drain(self) -> int:
        """Destroy every idle sandbox and keep none warm; in-use ones go when returned."""
        async with self._cond:
            self.paused = True
            doomed = [e for e in self.entries if e.state == "idle"]
            for entry in doomed:
                entry.state = "destroying"
            for entry in self.entries:
                if entry.state in ("leased", "creating"):
                    entry.destroy_on_return = True
        await asyncio.gather(*(self._destroy(e) for e in doomed))
        drained = 0
        for name in sorted(self.own_warm):
            owner = self.providers(name)
            if isinstance(owner, OwnWarmPool):
                drained += await owner.drain_warm()
        return len(doomed) + drained

    async def destroy_idle(self, provider: str, sandbox_id: str) -> bool:
        """Destroy one sandbox the pool holds idle; False when it holds no such sandbox."""
        async with self._cond:
            found = [e for e in self.entries if e.provider == provider and e.id == sandbox_id]
            if not found:
                return False
            entry = found[0]
            if entry.state != "idle":
                raise ConfigError(
                    f"sandbox {sandbox_id} is {entry.state} (task {entry.task_id})",
                    hint="cancel or stop its task instead",
                )
            entry.state = "destroying"
        await self._destroy(entry)
        return True

    async def close(self) -> None:
        """Wait for background resets and destroys (a shutdown leaves in-use sandboxes to
        reconcile)."""
        for start in self._deferred.values():  # no grace to wait out: nothing to answer
            start.set()
        while self._background:  # a reset may end in a destroy of its own
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- restart -----------------------------------------------------------------------
    async def adopt(self, provider: str, sandbox_id: str, task_id: str) -> Lease:
        """Take over a sandbox a previous daemon leased to ``task_id`` (it keeps running)."""
        owner = self.providers(provider)
        sandbox = await owner.get(sandbox_id)
        spec = sandbox.spec
        slot_name = spec.labels.get("hal.slot")
        slot = self.slots.get(slot_name) if slot_name else None
        key = spec.labels.get("hal.pool") or pool_key(spec)
        async with self._cond:
            entry = Entry(provider, key, spec, slot, "leased", id=sandbox_id, task_id=task_id)
            self.entries.append(entry)
            await self._record(entry)
        return Lease(sandbox, True, entry)

    async def disown(self, lease: Lease) -> None:
        """Let go of an adopted sandbox without touching it: the process that won its task
        runs it (a resume adopting the same agent as this daemon's recovery), and gives it
        back or destroys it itself. Neither the sandbox nor its slot is touched; the entry
        and its row go."""
        entry = lease.entry
        async with self._cond:
            if entry.state != "gone":
                await self._forget(entry)

    def status(self) -> dict[str, Any]:
        """Counts per provider and per key, for ``hal pool status``."""
        return report.status(self)

    async def full_status(self) -> dict[str, Any]:
        """:meth:`status`, and under ``own_warm`` how many warm sandboxes each provider that
        keeps its own has waiting (``{"free": n}``, or ``{"error": why}`` when it cannot
        say: a cluster out of reach must not hide the rest of the pool)."""
        found = self.status()
        found["own_warm"] = {}
        for name in sorted(self.own_warm):
            try:  # the provider may no longer load (its config gone): say so
                owner = self.providers(name)
                if isinstance(owner, OwnWarmPool):
                    found["own_warm"][name] = {"free": await owner.warm_count()}
            except HalError as exc:
                found["own_warm"][name] = {"error": exc.one_line()}
        return found

    def sandboxes(self) -> list[dict[str, Any]]:
        """Every tracked sandbox, for ``hal sandbox list``."""
        return report.sandboxes(self)
