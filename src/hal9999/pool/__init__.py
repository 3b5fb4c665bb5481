"""The warm pool: sandboxes kept ready per spec and per provider, reset or destroyed after use."""

from hal9999.pool.pool import Entry, Lease, WarmPool
from hal9999.pool.settings import ProviderSettings, SchedulerSettings
from hal9999.pool.slots import SlotDir, WorkspaceAttach, pool_key

__all__ = [
    "Entry",
    "Lease",
    "ProviderSettings",
    "SchedulerSettings",
    "SlotDir",
    "WarmPool",
    "WorkspaceAttach",
    "pool_key",
]
