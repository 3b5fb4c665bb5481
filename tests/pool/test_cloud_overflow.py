"""Overflow from a local provider to the cloud: ``--provider bwrap,digitalocean`` fills bwrap
to its limit, then makes droplets (the fake DigitalOcean API, real sshds), within the
spend cap; a task beyond every limit waits, and takes a droplet's place when one ends.
Every droplet is deleted at the end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.do_api import FakeDigitalOcean
from tests.support.pool import PooledService
from tests.support.tasks import make_task, until

from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.pool.settings import SchedulerSettings
from hal9999.providers.base import Provider
from hal9999.providers.registry import load_provider
from hal9999.store import Store
from hal9999.tasks.scheduler import Scheduler

pytestmark = [pytest.mark.bwrap, pytest.mark.ssh, pytest.mark.timeout(300),
              pytest.mark.usefixtures("ssh_connections_closed")]  # fmt: skip
ORDER = ["bwrap", "digitalocean"]


async def test_tasks_overflow_from_bwrap_to_droplets_within_the_cap(
    tmp_path: Path, hal_home: Path, fake_do: FakeDigitalOcean,
    fake_do_settings: dict[str, Any],
) -> None:  # fmt: skip
    providers: dict[str, Provider] = {
        "bwrap": load_provider("bwrap", state_dir=hal_home / "sandboxes" / "bwrap"),
        "digitalocean": load_provider(
            "digitalocean", state_dir=hal_home / "sandboxes" / "digitalocean",
            settings=fake_do_settings | {"max_machines": 2},
        ),
    }  # fmt: skip
    limits = {"bwrap": 1, "digitalocean": 2}
    sizes = {name: ProviderSettings(max_size=limits[name]) for name in ORDER}
    pool = WarmPool(providers=lambda name: providers[name], settings=lambda name: sizes[name],
                    slots=SlotDir(tmp_path / "slots"))  # fmt: skip
    store = Store.open(hal_home)
    service = PooledService(store, pool, providers)
    scheduler = Scheduler(service, SchedulerSettings(max_concurrent=10),  # type: ignore[arg-type]
                          lambda name: limits.get(name, 0))  # fmt: skip
    ids = [f"ovf{n:02d}aaaa" for n in range(4)]
    for n, task_id in enumerate(ids):
        store.insert_task(make_task(hal_home, task_id, "queued", created_at=n,
                                    provider="bwrap", providers=ORDER))  # fmt: skip
    loop = asyncio.create_task(scheduler.run_forever())
    try:
        await until(lambda: len(service.ran_on) == 3, timeout=120)
        placed = [store.get_task(task_id).provider for task_id in ids[:3]]
        assert placed == ["bwrap", "digitalocean", "digitalocean"]
        assert len(fake_do.live()) == 2 and store.get_task(ids[3]).status == "queued"
        service.gate(ids[1]).set()  # a droplet's task ends: its droplet goes, the 4th gets one
        await until(lambda: ids[3] in service.ran_on, timeout=120)
        assert service.ran_on[ids[3]][0] == "digitalocean"
        assert len([s for s in fake_do.seen if s.method == "POST"]) == 3
        for gate in ids:
            service.gate(gate).set()
        await until(lambda: not scheduler.running, timeout=120)
        assert all(store.get_task(t).status == "succeeded" for t in ids)
    finally:
        for gate in ids:
            service.gate(gate).set()
        await scheduler.shutdown()
        loop.cancel()
        for provider in providers.values():
            for info in await provider.list():
                await provider.destroy(info.id)
        store.close()
    await until(lambda: not fake_do.live(), timeout=30)
