"""Fixtures of the process-manager tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hal9999.process.base import ProcessManager
from hal9999.process.direct import DirectProcessManager
from hal9999.process.tmux import TmuxProcessManager
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


@pytest.fixture(
    params=[pytest.param("tmux", marks=pytest.mark.tmux), pytest.param("direct")]
)  # fmt: skip
def manager(request: pytest.FixtureRequest) -> ProcessManager:
    """The managers whose supervisor is hal's own (tmux, direct), in turn; a test file
    that tries others (test_managers, test_pm2_inside) has its own."""
    return TmuxProcessManager() if request.param == "tmux" else DirectProcessManager()
