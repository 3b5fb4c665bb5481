"""What the tests of the one-machine-per-sandbox cloud providers share
(test_digitalocean.py, test_morph.py): a provider loaded as a hal process would load it,
its sandbox spec, and a machine made to vanish while it boots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypeVar

from tests.fakes.vendor_api import FakeVendorApi

from hal9999.providers.cloud.host import CloudHostProvider
from hal9999.providers.registry import load_provider
from hal9999.spec import SandboxSpec

P = TypeVar("P", bound=CloudHostProvider[Any, Any])


def make(kind: type[P], hal_home: Path, settings: dict[str, Any], **extra: Any) -> P:
    """A ``kind`` provider with ``settings`` (and ``extra`` over them) in ``hal_home``'s
    state dir, loaded through the registry (so its settings are validated)."""
    provider = load_provider(kind.name, state_dir=hal_home / "sandboxes" / kind.name,
                             settings=settings | extra)  # fmt: skip
    assert isinstance(provider, kind)
    return provider


def spec(kind: type[CloudHostProvider[Any, Any]], workspace: Path) -> SandboxSpec:
    """A sandbox of ``kind`` over ``workspace``, on the host's network."""
    return SandboxSpec(provider=kind.name, network="host", workspace=workspace)


async def vanish_while_booting(fake: FakeVendorApi[Any]) -> None:
    """Wait for the fake's first machine, then delete it behind hal's back."""
    while not fake.live():
        await asyncio.sleep(0.02)
    fake.vanish(fake.live()[0].id)
