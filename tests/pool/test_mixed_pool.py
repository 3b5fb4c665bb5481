"""A mixed pool over three real providers: ``--provider bwrap,docker,ssh`` fills bwrap up to
its limit, overflows to docker, then to ssh; 12 tasks run at once spread 4/4/4 in real
sandboxes, and a 13th waits for room on the first provider with some. Limits come from the
real settings chain (``HAL_<PROVIDER>_*``, then ``HAL_*``, then ``[pool.<provider>]``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.sshd import Sshd
from tests.support.pool import PooledService
from tests.support.tasks import make_task, until

from hal9999.config import HalConfig
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.pool.settings import SchedulerSettings, provider_settings
from hal9999.providers.base import Provider
from hal9999.providers.registry import load_provider
from hal9999.store import Store
from hal9999.tasks.scheduler import Scheduler

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.podman,
    pytest.mark.ssh,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("ssh_connections_closed"),
]
ORDER = ["bwrap", "docker", "ssh"]


async def test_twelve_tasks_spread_over_three_providers_in_order(
    tmp_path: Path, hal_home: Path, sshd_server: Sshd
) -> None:
    config = HalConfig(home=hal_home, pool={"max_size": 2, "ssh": {"max_size": 9}})
    environ = {
        "HAL_BWRAP_MAX_CONCURRENT": "4",
        "HAL_DOCKER_MAX_POOL_SIZE": "4",
        "HAL_MAX_POOL_SIZE": "4",
    }
    settings = {name: provider_settings(config, environ, name) for name in ORDER}
    # HAL_BWRAP_* and HAL_DOCKER_* are the providers' own; ssh's HAL_* beats [pool.ssh].
    assert (settings["bwrap"].max_concurrent, settings["docker"].max_size) == (4, 4)
    assert (settings["ssh"].max_size, settings["ssh"].max_concurrent) == (4, None)
    limits = {
        name: s.max_concurrent if s.max_concurrent is not None else s.max_size
        for name, s in settings.items()
    }
    sizes = {name: ProviderSettings(max_size=8) for name in ORDER}
    providers: dict[str, Provider] = {
        "bwrap": load_provider("bwrap", state_dir=hal_home / "sandboxes" / "bwrap"),
        "docker": load_provider("docker", state_dir=hal_home / "sandboxes" / "docker"),
        "ssh": load_provider(
            "ssh",
            state_dir=hal_home / "sandboxes" / "ssh",
            settings={"hosts": [sshd_server.host_entry()]},
        ),
    }
    pool = WarmPool(
        providers=lambda name: providers[name],
        settings=lambda name: sizes[name],
        slots=SlotDir(tmp_path / "slots"),
    )
    store = Store.open(hal_home)
    service = PooledService(store, pool, providers)
    scheduler = Scheduler(
        service,  # type: ignore[arg-type]
        SchedulerSettings(max_concurrent=20),
        lambda name: limits.get(name, 0),
    )
    ids = [f"mix{n:02d}aaa" for n in range(13)]
    for n, task_id in enumerate(ids):
        task = make_task(
            hal_home, task_id, "queued", created_at=n, provider="bwrap", providers=ORDER
        )
        store.insert_task(task)
    loop = asyncio.create_task(scheduler.run_forever())
    try:
        await until(lambda: len(service.ran_on) == 12, timeout=180)
        placed = [store.get_task(task_id).provider for task_id in ids[:12]]
        assert placed == ["bwrap"] * 4 + ["docker"] * 4 + ["ssh"] * 4, "in order, overflowing"
        assert store.get_task(ids[12]).status == "queued", "every provider is full"
        for task_id in ids[:12]:
            provider, sandbox_id = service.ran_on[task_id]
            assert provider == store.get_task(task_id).provider
            ran_here = Path(store.get_task(task_id).session_dir, "workspace", "ran-here")
            assert ran_here.read_text().strip() == sandbox_id, "its own workspace, its sandbox"
        assert len({sb for _, sb in service.ran_on.values()}) == 12, "12 sandboxes at once"
        service.gate(ids[5]).set()  # a docker task ends: the 13th takes its place there
        await until(lambda: ids[12] in service.ran_on, timeout=120)
        assert service.ran_on[ids[12]][0] == "docker"
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
    for provider in providers.values():
        assert await provider.list() == []
