"""The MCP hub: which agent each socket is served for, and what happens to the sessions of
an agent removed, made again under its name, or served while a sync runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from tests.hive.mcp_client import INIT, READY, connect, tool_call

from hal9999.hive.mcp.server import McpHub


async def test_ensure_serves_an_agent_not_served_yet_and_keeps_a_served_one(
    hub: McpHub,
) -> None:
    # An agent spawned since the hub's last sync gets its socket before its first turn's
    # sandbox starts (a pod lists the sockets it carries once, as the agent starts).
    await hub.ensure("alpha")
    sock = hub.paths.socket("alpha")
    assert hub.served == ["alpha"] and sock.is_socket()
    inode = sock.stat().st_ino
    await hub.ensure("alpha")  # served: the same socket, sessions in flight untouched
    assert sock.stat().st_ino == inode
    await hub.ensure("boss", manager=True)
    async with connect(hub.paths.socket("boss")) as client:
        assert "list_agents" in {t.name for t in (await client.list_tools()).tools}


async def test_ensure_and_a_sync_at_once_leave_one_listening_socket(hub: McpHub) -> None:
    def listening() -> int:
        fds = os.listdir("/proc/self/fd")
        return sum(1 for fd in fds if _is_socket(f"/proc/self/fd/{fd}"))

    before = listening()
    await asyncio.gather(hub.serve("alpha"), hub.ensure("alpha"), hub.ensure("alpha"))
    assert hub.served == ["alpha"]
    assert listening() == before + 1  # no listener left behind by a second bind
    async with connect(hub.paths.socket("alpha")) as client:
        assert "send" in {t.name for t in (await client.list_tools()).tools}


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


async def test_closing_an_agents_socket_ends_its_open_sessions(hub: McpHub) -> None:
    # A removed agent's connection made before must not go on acting as it (or as the next
    # agent spawned under its name): Server.close() alone only stops accepting.
    sock = await hub.serve("alpha")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write((json.dumps(INIT) + "\n" + json.dumps(READY) + "\n").encode())
    await writer.drain()
    assert json.loads(await asyncio.wait_for(reader.readline(), 10))["id"] == 1
    await hub.close("alpha")
    writer.write((json.dumps(tool_call(2, "inbox", {})) + "\n").encode())
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:  # the write hit the closed socket
        rest = b""
    assert rest == b""  # hung up, the call not answered
    writer.close()


async def _open_session(sock: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write((json.dumps(INIT) + "\n" + json.dumps(READY) + "\n").encode())
    await writer.drain()
    assert json.loads(await asyncio.wait_for(reader.readline(), 10))["id"] == 1
    return reader, writer


async def _hung_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether the server ends the session without answering a call."""
    writer.write((json.dumps(tool_call(2, "inbox", {})) + "\n").encode())
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        rest = b""
    writer.close()
    return rest == b""


async def test_an_agent_made_again_under_its_name_gets_nothing_of_the_old_one(
    hub: McpHub,
) -> None:
    # Removed and made again within the hub's sync interval: the old agent's sessions must
    # not act as the new one (read its inbox), and its sub-task list must not pass on.
    from hal9999.hive import subtasks

    sock = await hub.serve("alpha", born=1.0)
    old = await _open_session(sock)
    subtasks.own(hub.hive.home, "alpha", "oldtask1")
    await hub.ensure("alpha", born=1.0)  # the same agent: nothing happens
    assert subtasks.owned(hub.hive.home, "alpha") == ["oldtask1"]
    await hub.ensure("alpha", born=2.0)  # another agent of the name, before its first turn
    assert await _hung_up(*old)
    assert subtasks.owned(hub.hive.home, "alpha") == []
    async with connect(hub.paths.socket("alpha")) as client:
        assert "send" in {t.name for t in (await client.list_tools()).tools}


async def test_a_sync_serves_an_agent_made_again_as_a_new_one(hub: McpHub) -> None:
    from hal9999.hive import subtasks
    from hal9999.hive.store import AgentRecord, delete_agent, insert_agent

    def make(created: float) -> None:
        record = AgentRecord(
            name="alpha", agent="custom", provider="local", created_at=created, updated_at=created
        )
        insert_agent(hub.hive.store, record)

    make(1.0)
    await hub.sync()
    old = await _open_session(hub.paths.socket("alpha"))
    subtasks.own(hub.hive.home, "alpha", "oldtask1")
    delete_agent(hub.hive.store, "alpha")
    make(2.0)
    await hub.sync()
    assert await _hung_up(*old)
    assert subtasks.owned(hub.hive.home, "alpha") == []


async def test_retire_ends_a_removed_agents_sessions_at_once(hub: McpHub) -> None:
    from hal9999.hive import subtasks

    old = await _open_session(await hub.serve("alpha", born=1.0))
    subtasks.own(hub.hive.home, "alpha", "oldtask1")
    await hub.retire("alpha")
    assert await _hung_up(*old)
    assert hub.served == [] and subtasks.owned(hub.hive.home, "alpha") == []


async def test_a_late_retire_leaves_the_agent_made_again_under_its_name(hub: McpHub) -> None:
    # The old agent's removal retires it after the new one of its name was served (its first
    # turn, or a sync, took the hub's lock first): the new one's socket, sessions and
    # sub-task list stayed closed and removed until the next sync.
    from hal9999.hive import subtasks

    await hub.serve("alpha", born=1.0)
    await hub.ensure("alpha", born=2.0)
    new = await _open_session(hub.paths.socket("alpha"))
    subtasks.own(hub.hive.home, "alpha", "newtask1")
    await hub.retire("alpha", born=1.0)
    assert hub.served == ["alpha"] and hub.paths.socket("alpha").exists()
    assert subtasks.owned(hub.hive.home, "alpha") == ["newtask1"]
    reader, writer = new
    writer.write((json.dumps(tool_call(2, "inbox", {})) + "\n").encode())
    assert json.loads(await asyncio.wait_for(reader.readline(), 10))["id"] == 2  # still served
    await hub.retire("alpha", born=2.0)  # its own removal
    assert await _hung_up(*new)
    assert hub.served == [] and subtasks.owned(hub.hive.home, "alpha") == []


async def test_a_sync_never_acts_on_a_listing_older_than_a_serve(hub: McpHub) -> None:
    # A sync listed the agents, then an agent spawned meanwhile was served for its first turn
    # (and a removed one made again under its name, for its own): the sync, acting on its
    # older listing, closed the new agent's socket (and served the old one's again).
    from hal9999.hive.store import AgentRecord, insert_agent, list_agents

    def make(name: str, created: float) -> AgentRecord:
        record = AgentRecord(
            name=name, agent="custom", provider="local", created_at=created, updated_at=created
        )
        insert_agent(hub.hive.store, record)
        return record

    make("alpha", 1.0)
    await hub.sync()
    real_db, turns = hub.hive.db, []

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        found = await real_db(fn, *args, **kwargs)
        if fn is list_agents and not turns:  # the agents change as the listing returns
            from hal9999.hive.store import delete_agent

            await real_db(delete_agent, hub.hive.store, "alpha")
            for record in (make("alpha", 2.0), make("beta", 3.0)):
                ensure = hub.ensure(record.name, born=record.created_at)
                turns.append(asyncio.create_task(ensure))
            await asyncio.sleep(0.1)  # their first turns: served now, or after the sync
        return found

    hub.hive.db = db  # type: ignore[method-assign]
    await hub.sync()
    await asyncio.gather(*turns)
    assert hub.served == ["alpha", "beta"]
    assert hub._born == {"alpha": 2.0, "beta": 3.0}
