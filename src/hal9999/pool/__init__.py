"""The warm pool: sandboxes kept ready per spec and per provider, reset or destroyed after use.

The names below load on first use, so an in-process ``hal run`` (which reads
:mod:`hal9999.pool.settings` and never leases from a pool) does not import the pool itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hal9999.pymodule import lazy_names

if TYPE_CHECKING:
    from hal9999.pool.lending import Entry, Lease
    from hal9999.pool.pool import WarmPool
    from hal9999.pool.settings import ProviderSettings, SchedulerSettings
    from hal9999.pool.slots import SlotDir, pool_key

__all__ = [
    "Entry",
    "Lease",
    "ProviderSettings",
    "SchedulerSettings",
    "SlotDir",
    "WarmPool",
    "pool_key",
]

_HOMES = {
    "Entry": "hal9999.pool.lending",
    "Lease": "hal9999.pool.lending",
    "WarmPool": "hal9999.pool.pool",
    "ProviderSettings": "hal9999.pool.settings",
    "SchedulerSettings": "hal9999.pool.settings",
    "SlotDir": "hal9999.pool.slots",
    "pool_key": "hal9999.pool.slots",
}


__getattr__ = lazy_names(__name__, _HOMES, globals())
"""``WarmPool``, ``SlotDir``, ...: imported from their module when first asked for."""
