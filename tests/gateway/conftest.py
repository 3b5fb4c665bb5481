"""Gateway tests reuse the end-to-end fixtures: a private HAL_HOME, the bug repo, the scripted
LLM server and a per-test dummy key in the host variable the config names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import bug_repo, dummy_key, hal_cli, llm_server
from tests.ula_host import UlaHost, missing, ula_host

from hal9999.gateway.egress import EgressProxy
from hal9999.gateway.proxy import Gateway
from hal9999.store import Store

__all__ = ["bug_repo", "dummy_key", "hal_cli", "llm_server"]


@pytest.fixture
async def gateway(tmp_path: Path, sock_dir: Path) -> AsyncIterator[tuple[Gateway, str]]:
    store = Store.open(tmp_path / "home")
    gw = Gateway(store)
    sock = str(sock_dir / "llm.sock")
    server = await asyncio.start_unix_server(gw.serve_connection, path=sock)
    async with server:
        yield gw, sock
    await gw.drain()
    await gw.aclose()
    store.close()


@pytest.fixture
def ula() -> Iterator[UlaHost]:
    """A host the proxy may tunnel to: this host's own addresses are refused (local.py)."""
    if (why := missing()) is not None:
        pytest.skip(why)
    with ula_host() as host:
        yield host


@pytest.fixture
async def egress(tmp_path: Path, sock_dir: Path) -> AsyncIterator[tuple[Gateway, str]]:
    store = Store.open(tmp_path / "home")
    gateway = Gateway(store)
    sock = str(sock_dir / "egress.sock")
    server = await asyncio.start_unix_server(EgressProxy(gateway).serve_connection, path=sock)
    async with server:
        yield gateway, sock
    await gateway.drain()
    await gateway.aclose()
    store.close()
