"""Where a run gets its sandbox: created for it, or leased from the daemon's warm pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from hal9999.providers.base import Provider, Sandbox
from hal9999.spec import SandboxSpec

if TYPE_CHECKING:
    from hal9999.pool import Lease, WarmPool


class SandboxSource(Protocol):
    """Hands sandboxes to runs and takes them back."""

    async def acquire(self, provider: Provider, spec: SandboxSpec, task_id: str) -> Lease | None:
        """A sandbox for ``spec``; ``None`` means: create one directly with ``provider``."""
        ...

    async def release(self, sandbox: Sandbox, *, reuse: bool) -> bool:
        """Take ``sandbox`` back; False when it is not this source's (destroy it directly)."""
        ...

    def holds(self, sandbox: Sandbox) -> bool:
        """Whether ``sandbox`` is this source's lease (a pool's row records it)."""
        ...


class DirectSource:
    """No pool: every run creates its sandbox and destroys it afterwards (in-process runs)."""

    async def acquire(self, provider: Provider, spec: SandboxSpec, task_id: str) -> Lease | None:
        """Always ``None``: the runner creates the sandbox itself."""
        return None

    async def release(self, sandbox: Sandbox, *, reuse: bool) -> bool:
        """Never ours: the runner destroys the sandbox itself."""
        return False

    def holds(self, sandbox: Sandbox) -> bool:
        """Never ours: only the task's record names the sandbox."""
        return False


class PoolSource:
    """Runs lease sandboxes from a :class:`WarmPool` and give them back to it."""

    def __init__(self, pool: WarmPool) -> None:
        self.pool = pool
        self.leases: dict[str, Lease] = {}
        """Sandbox id -> its lease, while a run holds it."""

    async def acquire(self, provider: Provider, spec: SandboxSpec, task_id: str) -> Lease | None:
        """Claim a sandbox for ``spec`` from the pool."""
        lease = await self.pool.claim(spec, task_id=task_id)
        self.leases[lease.sandbox.id] = lease
        return lease

    def adopted(self, lease: Lease) -> None:
        """Track a lease taken over from a previous daemon."""
        self.leases[lease.sandbox.id] = lease

    async def disown(self, sandbox: Sandbox) -> None:
        """Forget an adopted sandbox another process runs now (see :meth:`WarmPool.disown`)."""
        lease = self.leases.pop(sandbox.id, None)
        if lease is not None:
            await self.pool.disown(lease)

    def holds(self, sandbox: Sandbox) -> bool:
        """Whether ``sandbox`` is leased from the pool (its row records it)."""
        return sandbox.id in self.leases

    async def release(self, sandbox: Sandbox, *, reuse: bool) -> bool:
        """Return the sandbox to the pool (reset or destroyed, per provider policy); a reset
        goes on in the background, so the run ends without waiting for it."""
        lease = self.leases.pop(sandbox.id, None)
        if lease is None:
            return False
        await self.pool.release(lease, reuse=reuse, wait=False)
        return True
