"""Fixtures of the process-manager tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.process import servers

from hal9999.process.base import ProcessManager
from hal9999.process.direct import DirectProcessManager
from hal9999.process.tmux import TmuxProcessManager, share_server, unshare_server
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


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Path]:
    """A daemon's runtime dir with its shared server; the server killed at the end."""
    run = tmp_path / "home" / "run"
    socket = await share_server(run)
    assert socket is not None
    yield run
    await unshare_server(run)
    for pid in servers(socket):
        os.kill(pid, 9)
    socket.unlink(missing_ok=True)
