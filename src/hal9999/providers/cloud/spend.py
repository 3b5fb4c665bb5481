"""Spend caps of cloud providers: most machines at once, most machine-hours a UTC day.

The counts live in hal's store (``cloud_machines``), shared by every hal process of the
HAL_HOME; a machine is reserved before the vendor is asked for it, in one write
transaction, so no number of concurrent creates passes the cap.

Machines that already run keep adding hours, so refusing new ones is not enough: a
:class:`SpendGuard` in every hal process that holds cloud sandboxes watches the day's
machine-hours and, ``stop_margin_s`` before the running machines would take them past the
cap, stops each (its processes killed and the session brought back: a checkpoint) and
deletes it. Its sandbox is then marked *capped*: every later use of it raises
:class:`SpendCapReached`, which is how the task running there fails, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from hal9999.errors import HalError, SandboxNotFound, SpendCapReached
from hal9999.store.sqlite import Store

logger = logging.getLogger(__name__)
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SpendCap(BaseModel):
    """The spend-cap settings every cloud provider's config carries."""

    model_config = ConfigDict(extra="forbid")

    max_machines: int = Field(default=4, ge=1)
    """Machines of this provider at once (booting ones included)."""
    max_machine_hours_per_day: float = Field(default=48.0, gt=0)
    """Machine-hours a UTC day; a machine that runs now counts at least ``reserve_hours``."""
    reserve_hours: float = Field(default=1.0, ge=0)
    """What a new machine is counted at until it has run longer."""
    stop_margin_s: float = Field(default=300.0, ge=0)
    """How long before the running machines would take the day past
    ``max_machine_hours_per_day`` they are stopped and deleted (room for the checkpoint
    and the delete)."""
    spend_check_s: float = Field(default=60.0, gt=0)
    """Longest time between two looks at the day's machine-hours."""


def home_of(state_dir: Path) -> Path:
    """The HAL_HOME a provider's state directory belongs to (``<home>/sandboxes/<name>``)."""
    if state_dir.parent.name == "sandboxes":
        return state_dir.parent.parent
    env = os.environ.get("HAL_HOME", "").strip()
    if env:
        return Path(env)
    from hal9999.config import default_home

    return default_home(os.environ)


class _Record(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def created_at(self) -> float: ...


class SandboxRecords(Protocol):
    """A provider's sandbox records, as reconciling them with its machines reads them."""

    def all(self) -> Iterable[_Record]:
        """Every record."""
        ...

    def load(self, sandbox_id: str) -> _Record:
        """One record (:class:`~hal9999.errors.SandboxNotFound` when there is none)."""
        ...

    def delete(self, sandbox_id: str) -> None:
        """Forget one record (:class:`~hal9999.errors.SandboxNotFound` when there is none)."""
        ...


class SpendLedger:
    """One provider's machines in the store; each call opens the store in a worker thread
    (SQLite waits for another process's write lock, which must not block the loop)."""

    def __init__(self, provider: str, state_dir: Path, cap: SpendCap) -> None:
        self.provider = provider
        self.home = home_of(state_dir)
        self.cap = cap
        self.capped_dir = state_dir / "capped"
        self.clock: Callable[[], float] = time.time
        """Now, in seconds since the epoch (a test sets its own)."""

    def _reserve(self, machine_id: str) -> None:
        with Store.open(self.home) as store:
            store.reserve_cloud_machine(
                self.provider, machine_id, now=self.clock(),
                max_machines=self.cap.max_machines,
                max_hours_per_day=self.cap.max_machine_hours_per_day,
                reserve_hours=self.cap.reserve_hours,
            )  # fmt: skip

    async def reserve(self, machine_id: str) -> None:
        """Count a machine about to be made; :class:`SpendCapReached` when it may not."""
        await asyncio.to_thread(self._reserve, machine_id)

    def _end(self, machine_id: str) -> None:
        with Store.open(self.home) as store:
            store.end_cloud_machine(self.provider, machine_id, now=self.clock())

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

    async def reconcile(
        self,
        records: SandboxRecords,
        *,
        live: set[str],
        spared: set[str],
        now: float,
        create_window_s: float,
        grace_s: float,
        machine: str,
        delete: Callable[[str], Awaitable[None]],
        forget: Callable[[str], None] = lambda _: None,
    ) -> list[str]:
        """Delete the sandboxes' machines in ``live`` that have no record (left by a crash),
        but those ``spared`` and those a create still boots; forget the records (older than
        ``grace_s``) whose machine is gone; end spend records of neither. Returns the
        sandbox ids acted on."""
        acted: list[str] = []
        known = {record.id for record in records.all()}
        # A sandbox is recorded only once its machine answers, so a machine without a
        # record may be one that a create (of this or another hal process) is still
        # booting: its spend record, reserved less than a whole create ago, says so.
        reserved = await self.open_since()
        creating = {sid for sid, at in reserved.items() if now - at < create_window_s}
        for sandbox_id in sorted(live - known - spared - creating):
            logger.warning("deleting orphan %s of sandbox %s", machine, sandbox_id)
            await delete(sandbox_id)
            acted.append(sandbox_id)
        for sandbox_id in sorted(known - live):
            with contextlib.suppress(SandboxNotFound):
                if now - records.load(sandbox_id).created_at < grace_s:
                    continue
            logger.warning("%s of sandbox %s is gone; forgetting it", machine, sandbox_id)
            forget(sandbox_id)
            with contextlib.suppress(SandboxNotFound):
                records.delete(sandbox_id)
            await self.end(sandbox_id)
            acted.append(sandbox_id)
        # A crash between reserving and recording leaves a spend record that no machine
        # and no sandbox answers to; left open it would count against the cap forever.
        for sandbox_id in reserved:
            if sandbox_id not in live | known | creating:
                await self.end(sandbox_id)
        return acted

    def _usage(self, reserve_hours: float) -> tuple[int, float]:
        with Store.open(self.home) as store:
            return store.cloud_usage(self.provider, now=self.clock(), reserve_hours=reserve_hours)

    async def usage(self) -> tuple[int, float]:
        """Machines running now and the day's machine-hours (a new machine counted at
        ``reserve_hours``, as the cap counts it for creates)."""
        return await asyncio.to_thread(self._usage, self.cap.reserve_hours)

    async def billed(self) -> tuple[int, float]:
        """Machines running now and the machine-hours they and today's others really ran."""
        return await asyncio.to_thread(self._usage, 0.0)

    # -- capped sandboxes -------------------------------------------------------------------
    def mark_capped(self, sandbox_id: str, message: str) -> None:
        """Remember that the cap ended ``sandbox_id`` (its later uses raise)."""
        if _ID.fullmatch(sandbox_id):
            self.capped_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.capped_dir / sandbox_id).write_text(message)

    def capped(self, sandbox_id: str) -> SpendCapReached | None:
        """The error of a sandbox the cap ended, else None."""
        if not _ID.fullmatch(sandbox_id):
            return None
        try:
            message = (self.capped_dir / sandbox_id).read_text()
        except OSError:
            return None
        return SpendCapReached(message, hint=_hint(self.provider, "its session kept the work "
                                                   "of the last checkpoint; "))  # fmt: skip


def _hint(provider: str, prefix: str = "") -> str:
    return (f"{prefix}wait for the next UTC day, or raise max_machine_hours_per_day in "
            f"[providers.{provider}]")  # fmt: skip


def seconds_to_cap(running: int, hours: float, cap: float) -> float:
    """Seconds until ``running`` machines take the day from ``hours`` to ``cap``
    machine-hours (infinite with none running)."""
    if running <= 0:
        return float("inf")
    return max(0.0, (cap - hours) * 3600.0 / running)


class SpendGuard:
    """Keeps the day's machine-hours of one provider under its cap, machines that already
    run included: ``stop_margin_s`` before they would pass it, each open machine goes
    through ``stop_machine`` (checkpoint, then delete), its sandbox marked capped first."""

    def __init__(self, ledger: SpendLedger,
                 stop_machine: Callable[[str], Awaitable[None]]) -> None:  # fmt: skip
        self.ledger = ledger
        self.stop_machine = stop_machine
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch from now on, in this process's event loop (once)."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.watch())

    async def stop(self) -> None:
        """Stop watching."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def watch(self) -> None:
        """Check, stop the machines when due, sleep until the next check; for ever."""
        cap = self.ledger.cap
        while True:
            try:
                running, hours = await self.ledger.billed()
            except (HalError, OSError) as exc:  # a busy store: look again soon
                logger.warning("spend cap of %s: %s", self.ledger.provider, exc)
                running, hours = 0, 0.0
            left = seconds_to_cap(running, hours, cap.max_machine_hours_per_day)
            if left <= cap.stop_margin_s:
                await self.stop_all(hours)
                await asyncio.sleep(cap.spend_check_s)  # what failed to stop: again later
                continue
            await asyncio.sleep(min(cap.spend_check_s, left - cap.stop_margin_s))

    async def stop_all(self, hours: float) -> list[str]:
        """Stop and delete every open machine of the provider; the ids acted on."""
        cap = self.ledger.cap.max_machine_hours_per_day
        provider = self.ledger.provider
        message = (f"{provider}: the day's machine-hours reached the spend cap ({hours:.2f} "
                   f"of {cap:g}); the machine was stopped and deleted")  # fmt: skip
        acted = []
        for machine_id in await self.ledger.open_machines():
            logger.warning("%s (sandbox %s)", message, machine_id)
            await asyncio.to_thread(self.ledger.mark_capped, machine_id, message)
            try:
                await self.stop_machine(machine_id)
            except (HalError, OSError) as exc:
                logger.warning("stopping %s machine %s for the spend cap failed: %s",
                               provider, machine_id, exc)  # fmt: skip
            acted.append(machine_id)
        return acted
