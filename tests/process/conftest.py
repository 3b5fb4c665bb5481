"""Fixtures of the process-manager tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hal9999.providers.base import Sandbox
from hal9999.providers.local import LocalProvider
from hal9999.spec import SandboxSpec


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A local sandbox over a temporary workspace (its launcher ``exec``s the command)."""
    provider = LocalProvider(state_dir=tmp_path / "state")
    (tmp_path / "ws").mkdir()
    spec = SandboxSpec(provider="local", network="host", workspace=tmp_path / "ws")
    async with await provider.create(spec) as created:
        yield created
