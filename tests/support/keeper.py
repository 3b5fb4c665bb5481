"""Claiming and running through a sandbox's keeper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.security.conftest import primed, require_keeper

from hal9999.pool import WarmPool
from hal9999.providers.bwrap.provider import BwrapProvider, BwrapSandbox
from hal9999.spec import SandboxSpec, ShellCommand


async def kept(provider: BwrapProvider, tmp_path: Path, name: str = "a") -> BwrapSandbox:
    """A primed sandbox whose commands enter its keeper (skips where there is none)."""
    (tmp_path / name).mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / name))
    return await primed(provider, box.id)


@asynccontextmanager
async def claimed(
    pool: WarmPool, provider: BwrapProvider, spec: SandboxSpec, task_id: str
) -> AsyncIterator[BwrapSandbox]:
    """The pool's sandbox claimed for ``spec``, one that can have a keeper (skips where it
    cannot); released after."""
    lease = await pool.claim(spec, task_id=task_id)
    try:
        box = lease.sandbox
        assert isinstance(box, BwrapSandbox)
        require_keeper(provider, box.id)
        yield box
    finally:
        await pool.release(lease)


async def run(box: BwrapSandbox, script: str) -> str:
    """Run ``script`` in ``box``; its output, asserting it succeeded."""
    result = await box.exec(ShellCommand(script=script), timeout=60)
    assert result.ok, result.stderr.decode() + result.stdout.decode()
    return result.text()
