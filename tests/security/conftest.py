"""What the boundary tests on bwrap share: a provider that leaves no sandbox behind, a warm
pool of one, a task's spec for it, and a sandbox's keeper where this host can have one
(providers/bwrap/keeper.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.providers.bwrap.provider import BwrapProvider, BwrapSandbox, keeps
from hal9999.spec import Bind, SandboxSpec, ShellCommand


@pytest.fixture
async def provider(hal_home: Path) -> AsyncIterator[BwrapProvider]:
    """A bwrap provider in the test's HAL_HOME; every sandbox it has at the end is destroyed."""
    made = BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")
    yield made
    for info in await made.list():
        await made.destroy(info.id)


def require_keeper(provider: BwrapProvider, sandbox_id: str) -> None:
    """Skip where the sandbox can have no keeper (not root, no build/hal-launch, old kernel)."""
    if not keeps(provider.store.load(sandbox_id)):
        pytest.skip("a keeper: hal as root, with build/hal-launch, Linux 5.12+")


def pool_of(provider: BwrapProvider, hal_home: Path) -> WarmPool:
    """A pool of one sandbox of ``provider``."""
    return WarmPool(
        providers=lambda name: provider,
        settings=lambda name: ProviderSettings(max_size=1),
        slots=SlotDir(hal_home / "pool"),
    )


def session_spec(
    root: Path, n: int, *binds: Bind, files: Mapping[str, str] | None = None, **fields: Any
) -> SandboxSpec:
    """A spec shaped like task ``n``'s, from its session at ``root``/s``n``: its own workspace,
    and each of ``binds`` with its source a directory of the session (``source`` relative to
    it) holding ``files`` (paths relative to the session); ``fields`` for the rest."""
    session = root / f"s{n}"
    for name in ("workspace", *(str(bind.source) for bind in binds)):
        (session / name).mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (session / name).write_text(text)
    return SandboxSpec(
        workspace=session / "workspace",
        binds=tuple(
            Bind(source=session / bind.source, target=bind.target, read_only=bind.read_only)
            for bind in binds
        ),
        **fields,
    )


async def primed(provider: BwrapProvider, sandbox_id: str) -> BwrapSandbox:
    """The sandbox with its keeper started, as the pool primes it: a handle whose commands
    enter the keeper (skips where there is none)."""
    require_keeper(provider, sandbox_id)
    await provider.prime(sandbox_id)
    handle = await provider.get(sandbox_id)
    assert isinstance(handle, BwrapSandbox)
    assert "--enter" in handle.launch(ShellCommand(script="true")).argv
    return handle
