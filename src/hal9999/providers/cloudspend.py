"""Spend caps of cloud providers: most machines at once, most machine-hours a UTC day.

The counts live in hal's store (``cloud_machines``), shared by every hal process of the
HAL_HOME; a machine is reserved before the vendor is asked for it, in one write
transaction, so no number of concurrent creates passes the cap.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hal9999.store.sqlite import Store


class SpendCap(BaseModel):
    """The spend-cap settings every cloud provider's config carries."""

    model_config = ConfigDict(extra="forbid")

    max_machines: int = Field(default=4, ge=1)
    """Machines of this provider at once (booting ones included)."""
    max_machine_hours_per_day: float = Field(default=48.0, gt=0)
    """Machine-hours a UTC day; a machine that runs now counts at least ``reserve_hours``."""
    reserve_hours: float = Field(default=1.0, ge=0)
    """What a new machine is counted at until it has run longer."""


def home_of(state_dir: Path) -> Path:
    """The HAL_HOME a provider's state directory belongs to (``<home>/sandboxes/<name>``)."""
    if state_dir.parent.name == "sandboxes":
        return state_dir.parent.parent
    env = os.environ.get("HAL_HOME", "").strip()
    if env:
        return Path(env)
    from hal9999.config import default_home

    return default_home(os.environ)


class SpendLedger:
    """One provider's machines in the store; each call opens the store in a worker thread
    (SQLite waits for another process's write lock, which must not block the loop)."""

    def __init__(self, provider: str, state_dir: Path, cap: SpendCap) -> None:
        self.provider = provider
        self.home = home_of(state_dir)
        self.cap = cap

    def _reserve(self, machine_id: str) -> None:
        with Store.open(self.home) as store:
            store.reserve_cloud_machine(
                self.provider, machine_id, now=time.time(),
                max_machines=self.cap.max_machines,
                max_hours_per_day=self.cap.max_machine_hours_per_day,
                reserve_hours=self.cap.reserve_hours,
            )  # fmt: skip

    async def reserve(self, machine_id: str) -> None:
        """Count a machine about to be made; :class:`SpendCapReached` when it may not."""
        await asyncio.to_thread(self._reserve, machine_id)

    def _end(self, machine_id: str) -> None:
        with Store.open(self.home) as store:
            store.end_cloud_machine(self.provider, machine_id, now=time.time())

    async def end(self, machine_id: str) -> None:
        """The machine is gone."""
        await asyncio.to_thread(self._end, machine_id)

    def _open(self) -> list[str]:
        with Store.open(self.home) as store:
            return store.open_cloud_machines(self.provider)

    async def open_machines(self) -> list[str]:
        """Machines not yet ended."""
        return await asyncio.to_thread(self._open)

    def _open_starts(self) -> dict[str, float]:
        with Store.open(self.home) as store:
            return store.open_cloud_machine_starts(self.provider)

    async def open_since(self) -> dict[str, float]:
        """Machines not yet ended, each with when it was reserved."""
        return await asyncio.to_thread(self._open_starts)

    def _usage(self) -> tuple[int, float]:
        with Store.open(self.home) as store:
            return store.cloud_usage(
                self.provider, now=time.time(), reserve_hours=self.cap.reserve_hours
            )

    async def usage(self) -> tuple[int, float]:
        """Machines running now and the day's machine-hours."""
        return await asyncio.to_thread(self._usage)
