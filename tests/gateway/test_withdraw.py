"""A task's grant goes when the task comes to rest: its runner withdraws it, or, when the
runner was killed, whoever puts the task to rest tells the gateway (and a check every
``STALE_CHECK_S`` catches what nobody told)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest
from tests.support.gateway import KEY
from tests.support.store import make_task

from hal9999.gateway import server as gateway_server
from hal9999.gateway.channel import GatewayPaths, Grant, new_token
from hal9999.store import Store
from hal9999.tasks.state import TaskStatus, transition


async def test_grants_of_tasks_at_rest_are_withdrawn(tmp_path: Path) -> None:
    server = gateway_server.GatewayServer(GatewayPaths(tmp_path / "home"))
    server.store.insert_task(make_task("running1", status="running"))
    server.store.insert_task(make_task("crashed1", status="interrupted"))
    grants = [
        Grant(task_id=task, token=new_token(), upstream="http://x", key=KEY)
        for task in ("running1", "crashed1", "not-a-task")
    ]
    for grant in grants:
        server.gateway.register(grant)
    server.drop_stale_grants()  # a runner killed before withdrawing its grant
    assert sorted(g.task_id for g in server.gateway.grants.values()) == ["not-a-task", "running1"]
    await server.gateway.aclose()
    server.store.close()


async def test_a_task_put_to_rest_by_another_process_loses_its_grant_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reaper marks a killed runner's task interrupted: its grant lived on until the
    # gateway's next check of every grant's task (5 s). Now whoever puts a task to rest
    # tells the gateway; with that check never coming, the grant still goes.
    monkeypatch.setattr(gateway_server, "STALE_CHECK_S", 3600.0)
    paths = GatewayPaths(tmp_path / "home")
    paths.root.mkdir(parents=True)
    gateway_server.prepare_channel(paths)
    server = gateway_server.GatewayServer(paths, idle_s=3600.0)
    ready_read, ready_write = os.pipe()
    serving = asyncio.ensure_future(server.run(ready_write))
    await asyncio.to_thread(os.read, ready_read, 16)
    os.close(ready_read)
    store = Store.open(paths.home)  # another process's, as the reaper's is
    try:
        for task in ("left", "reaped"):
            store.insert_task(make_task(task, status="running"))
            server.gateway.register(Grant(task_id=task, token=new_token(), upstream="http://x",
                                          key=KEY))  # fmt: skip
        await asyncio.to_thread(transition, store, None, "reaped", TaskStatus.INTERRUPTED)
        for _ in range(500):  # the gateway handles the message on its own loop
            if len(server.gateway.grants) < 2:
                break
            await asyncio.sleep(0.02)
        assert [g.task_id for g in server.gateway.grants.values()] == ["left"]
    finally:
        store.close()
        paths.lock.unlink(missing_ok=True)  # run() ends when its HAL_HOME's lock goes
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await server.gateway.aclose()
        server.store.close()
