"""Warm pools over fake and gated providers, and what a reset leaves behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from tests.support.tasks import ScriptedService

from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.providers.base import Provider, Sandbox
from hal9999.providers.fake.provider import FakeProvider
from hal9999.spec import Bind, SandboxSpec, ShellCommand
from hal9999.store import Store, TaskRecord


class GatedReset(FakeProvider):
    """The fake provider, whose resets wait for :attr:`gate` (and are counted)."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.gate = asyncio.Event()
        self.resets = 0
        self.destroyed: list[str] = []

    async def reset(self, sandbox_id: str) -> Sandbox:
        await self.gate.wait()
        self.resets += 1
        return await super().reset(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        self.destroyed.append(sandbox_id)
        await super().destroy(sandbox_id)


def spec_of(root: Path, n: int) -> SandboxSpec:
    """The spec of a fake sandbox of task ``t{n}``, its session under ``root``."""
    session = root / f"s{n}"
    for name in ("workspace", "home"):
        (session / name).mkdir(parents=True, exist_ok=True)
    return SandboxSpec(
        provider="fake",
        workspace=session / "workspace",
        binds=(Bind(source=session / "home", target="/home/hal", read_only=False),),
        labels={"hal.task": f"t{n}"},
    )


def make(
    tmp_path: Path, store: Store | None = None, *, max_size: int = 1
) -> tuple[GatedReset, WarmPool]:
    """A gated-reset provider and a warm pool of it holding up to ``max_size`` sandboxes."""
    provider = GatedReset(tmp_path / "state")
    settings = ProviderSettings.model_validate({"max_size": max_size})
    pool = WarmPool(
        providers=lambda name: provider,
        settings=lambda name: settings,
        slots=SlotDir(tmp_path / "slots"),
        store=store,
    )
    return provider, pool


class PooledService(ScriptedService):
    """Each run claims a real sandbox of its placed provider from the pool, runs a command in
    its workspace, holds it until released, and gives it back."""

    def __init__(self, store: Store, pool: WarmPool, providers: dict[str, Provider]) -> None:
        super().__init__(store)
        self.pool = pool
        self.providers = providers
        self.ran_on: dict[str, tuple[str, str]] = {}
        """Task id -> (provider, sandbox id) seen from inside."""

    async def run(self, task_id: str, **_: Any) -> TaskRecord:
        self.started.append(task_id)
        task = self.store.update_task(task_id, status="running")
        network = (
            "none" if "none" in self.providers[task.provider].capabilities.network_modes else "host"
        )
        spec = SandboxSpec(
            provider=task.provider, network=network, workspace=Path(task.session_dir) / "workspace"
        )
        lease = await self.pool.claim(spec, task_id=task_id, timeout=120)
        try:
            out = await lease.sandbox.exec(ShellCommand(script="echo $HAL_SANDBOX | tee ran-here"))
            assert out.ok, out
            self.ran_on[task_id] = (lease.sandbox.provider, out.text().strip())
            await self.gate(task_id).wait()
        finally:
            await self.pool.release(lease)
        return self.store.update_task(task_id, status="succeeded")


def dig(top: Path, depth: int) -> int:
    """Make ``top`` and a chain of ``depth`` directories ``d`` under it (deeper than any path
    the kernel resolves whole); an open descriptor of the deepest, the caller's to close."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd
