"""The MCP server over an agent's socket, reached through the real forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from tests.hive.mcp_client import FORWARDER, INIT, READY, call, connect, tool_call

from hal9999.hive.mcp.server import PARSE_ERROR, McpHub
from hal9999.hive.mcp.tools import Caller, Hive, NoArgs, Tool
from hal9999.store import Store


async def test_lists_the_agent_tools_and_hides_the_manager_ones(hub: McpHub) -> None:
    sock = await hub.serve("alpha")
    boss = await hub.serve("boss", manager=True)
    async with connect(sock) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert {"send", "inbox", "recv", "run_task", "task_status", "task_result"} <= names
    assert "list_agents" not in names
    async with connect(boss) as client:
        assert "list_agents" in {t.name for t in (await client.list_tools()).tools}


async def test_errors_are_one_line_tool_errors(hub: McpHub) -> None:
    sock = await hub.serve("alpha")
    async with connect(sock) as client:
        failed, text = await call(client, "task_status", id="nope1234")
        assert failed and text.startswith("usage: no sub-task 'nope1234' of yours")
        failed, text = await call(client, "task_status")
        assert failed and text == "bad arguments for task_status: id: Field required"
        failed, text = await call(client, "recv", wait_s=999)
        assert failed and text.startswith("bad arguments for recv: wait_s:")
        failed, text = await call(client, "list_agents")
        assert failed and text.startswith("unknown tool 'list_agents'")
        assert "\n" not in text


async def test_socket_is_in_its_own_directory_and_reopens(hub: McpHub) -> None:
    sock = await hub.serve("alpha")
    assert sock.parent.name == "alpha" and (sock.parent / "forwarder.py").is_file()
    assert oct(sock.parent.parent.stat().st_mode & 0o777) == "0o700"
    await hub.close("alpha")
    assert not sock.exists()
    assert await hub.serve("alpha") == sock
    async with connect(sock) as client:
        assert (await client.list_tools()).tools


async def test_the_forwarder_waits_for_a_socket_opened_late(hub: McpHub) -> None:
    async def open_later() -> None:
        await asyncio.sleep(1.0)
        await hub.serve("late")

    hub.paths.prepare("late")  # as the runner does before the sandbox starts
    sock = hub.paths.socket("late")
    opener = asyncio.create_task(open_later())
    async with connect(sock) as client:  # started before the socket exists
        assert (await client.list_tools()).tools
    await opener


def test_the_forwarder_says_in_one_line_when_no_socket_comes(tmp_path: Path) -> None:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-I", "-S", str(FORWARDER), str(tmp_path / "none.sock")],
        input=b"", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 1 and time.monotonic() - started < 20
    assert out.stderr.decode().startswith("hal: cannot reach hal's MCP socket")
    assert out.stderr.count(b"\n") == 1


async def test_one_agent_gets_a_bounded_number_of_connections(hub: McpHub) -> None:
    sock = await hub.serve("alpha")
    most = hub.budget.limits.connections_per_agent
    held = [await asyncio.open_unix_connection(str(sock)) for _ in range(most)]
    await asyncio.sleep(0.2)
    reader, extra = await asyncio.open_unix_connection(str(sock))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # hung up at once
    for _, writer in [*held, (reader, extra)]:
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.2)
    async with connect(sock) as client:  # the slots free again
        assert (await client.list_tools()).tools


@pytest.mark.skipif(shutil.which("perl") is None, reason="no perl here")
async def test_without_python_the_perl_forwarder_carries_the_session(
    hub: McpHub, tmp_path: Path
) -> None:
    sock = await hub.serve("alpha")
    bare = tmp_path / "bin"  # a PATH with a shell and perl, no python (hal's container image)
    bare.mkdir()
    for program in ("sh", "perl"):
        (bare / program).symlink_to(shutil.which(program) or program)
    async with connect(sock, path=str(bare)) as client:
        failed, text = await call(client, "task_status", id="nope1234")
    assert failed and text.startswith("usage: no sub-task 'nope1234' of yours")


async def test_hostile_bytes_get_errors_or_a_hang_up_and_others_go_on(hub: McpHub) -> None:
    from hal9999.hive.mcp.budget import MAX_LINE

    sock = await hub.serve("alpha")
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=1 << 20)
    writer.write(b"this is not json\n")
    ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
    writer.write((json.dumps(ping) + "\n").encode())
    await writer.drain()
    refused = json.loads(await asyncio.wait_for(reader.readline(), 10))
    assert refused["id"] is None and refused["error"]["code"] == -32700  # the garbage
    reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
    assert reply == {"jsonrpc": "2.0", "id": 7, "result": {}}
    writer.write(b"x" * (MAX_LINE + 10) + b"\n")  # past the line limit: hung up
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    async with connect(sock) as client:  # the agent's next connection works
        assert (await client.list_tools()).tools


class SlowArgs(NoArgs):
    """How long the tool takes."""

    seconds: float


async def slow(caller: Caller, args: SlowArgs) -> str:
    await asyncio.sleep(args.seconds)
    return "slept"


SLOW = Tool("slow", "Sleep, then answer.", SlowArgs, slow)


async def pipelined(sock: Path, messages: list[dict[str, object]]) -> list[dict[str, Any]]:
    """Send every message at once, half-close after the last answer's predecessor, read all."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write("".join(json.dumps(m) + "\n" for m in messages).encode())
    await writer.drain()
    replies = [json.loads(await asyncio.wait_for(reader.readline(), 10)) for _ in range(2)]
    writer.write_eof()  # done sending, as a shell agent closing the forwarder's stdin
    while line := await asyncio.wait_for(reader.readline(), 10):
        replies.append(json.loads(line))
    writer.close()
    return replies


async def test_a_client_that_half_closes_still_gets_every_answer(tmp_path: Path) -> None:
    # A slow call (a tool waiting on the store in a loaded daemon) still running when the
    # client closes its side after a fast one answered: the SDK alone would answer it
    # "Connection closed" (a docker hive test's intermittent failure in CI).
    store = Store.open(tmp_path / "home")
    hub = McpHub(Hive(store=store, home=tmp_path / "home"), extra_tools=[SLOW])
    try:
        sock = await hub.serve("alpha")
        replies = await pipelined(sock, [
            INIT, READY, tool_call(2, "slow", {"seconds": 0.5}),
            tool_call(3, "slow", {"seconds": 0, "sender": "beta"})])  # fmt: skip
        by_id = {r["id"]: r for r in replies}
        assert [r["id"] for r in replies] == [1, 3, 2], replies
        assert by_id[3]["result"]["isError"] is True
        assert by_id[2]["result"] == {
            "content": [{"type": "text", "text": "slept"}],
            "isError": False,
        }, by_id[2]
    finally:
        await hub.close_all()
        store.close()


async def test_a_cancelled_call_does_not_hold_a_half_closed_connection(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    hub = McpHub(Hive(store=store, home=tmp_path / "home"), extra_tools=[SLOW])
    try:
        sock = await hub.serve("alpha")
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": 2}}  # fmt: skip
        async with asyncio.timeout(120):  # the drain did not wait for the hour's sleep
            replies = await pipelined(sock, [
                INIT, READY, tool_call(2, "slow", {"seconds": 3600}),
                tool_call(3, "slow", {"seconds": 0}), cancel])  # fmt: skip
        assert [r["id"] for r in replies] == [1, 3]  # a cancelled request is never answered
    finally:
        await hub.close_all()
        store.close()


async def test_one_connection_runs_a_bounded_number_of_calls_at_once(tmp_path: Path) -> None:
    # The SDK runs each request of a connection in its own task: 2,000 pipelined calls
    # (each a 40 s recv in real use) were 2,000 tasks polling the store at once.
    from hal9999.hive.mcp.server import MAX_IN_FLIGHT

    running, peak = 0, 0

    async def counted(caller: Caller, args: SlowArgs) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(args.seconds)
        finally:
            running -= 1
        return "slept"

    store = Store.open(tmp_path / "home")
    tool = Tool("slow", "Sleep, then answer.", SlowArgs, counted)
    hub = McpHub(Hive(store=store, home=tmp_path / "home"), extra_tools=[tool])
    try:
        sock = await hub.serve("alpha")
        calls = [tool_call(i, "slow", {"seconds": 0.2}) for i in range(2, 4 * MAX_IN_FLIGHT + 2)]
        replies = await pipelined(sock, [INIT, READY, *calls])
        assert sorted(r["id"] for r in replies) == list(range(1, 4 * MAX_IN_FLIGHT + 2))
        assert peak <= MAX_IN_FLIGHT, f"{peak} calls ran at once"
        # Lines the SDK would drop (not JSON-RPC 2.0 requests) take no slot: hal refuses
        # each at once, with an error for its id.
        dropped = [{"jsonrpc": "2.0", "id": 5, "method": 123}, {"id": 6, "method": "ping"},
                   {"jsonrpc": "2.0", "id": 7, "method": "ping", "params": "x"}]  # fmt: skip
        ping = {"jsonrpc": "2.0", "id": 8, "method": "ping"}
        started = time.monotonic()
        replies = await pipelined(sock, [INIT, READY, *dropped * MAX_IN_FLIGHT, ping])
        assert sorted(r["id"] for r in replies) == sorted([1, *[5, 6, 7] * MAX_IN_FLIGHT, 8])
        assert replies[-1]["id"] == 8
        assert all(r["error"]["code"] == -32600 for r in replies if r["id"] in (5, 6, 7))
        assert time.monotonic() - started < 10
    finally:
        await hub.close_all()
        store.close()


@contextlib.asynccontextmanager
async def tcp_to(sock: Path) -> AsyncIterator[int]:
    """A 127.0.0.1 port carried to the unix socket ``sock``, as a microVM's channel does."""

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_unix_connection(str(sock))
        await asyncio.gather(pump(reader, up_w), pump(up_r, writer), return_exceptions=True)

    server = await asyncio.start_server(carry, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize("forwarder", ["python", "perl"])
async def test_the_forwarders_reach_a_forwarded_port(
    hub: McpHub, tmp_path: Path, forwarder: str
) -> None:
    if forwarder == "perl" and shutil.which("perl") is None:
        pytest.skip("no perl here")
    sock = await hub.serve("alpha")
    path = None
    if forwarder == "perl":
        bare = tmp_path / "bin"
        bare.mkdir()
        for program in ("sh", "perl"):
            (bare / program).symlink_to(shutil.which(program) or program)
        path = str(bare)
    async with tcp_to(sock) as port, connect(sock, path=path, target=f"tcp:127.0.0.1:{port}") as c:
        failed, text = await call(c, "task_status", id="nope1234")
    assert failed and text.startswith("usage: no sub-task 'nope1234' of yours")


async def test_a_vm_gets_a_forwarded_port_instead_of_the_bound_socket(tmp_path: Path) -> None:
    from hal9999.hive.mcp.channel import McpPaths, McpRoute, forward_port

    class Bound:  # a sandbox that sees its binds at their targets (bwrap, docker)
        def path(self, target: str) -> str:
            return target

    class Mirrored:  # one that keeps them in a mirror (a kubernetes pod)
        def path(self, target: str) -> str:
            return {"/hal-mcp": "/hal/b3"}.get(target, target)

    class Vm(Bound):
        forwarded: list[tuple[int, Path]] = []

        async def forward_socket(self, port: int, socket: Path) -> None:
            self.forwarded.append((port, socket))

    route = McpRoute(McpPaths(tmp_path), "alpha")
    await route.connect(cast(Any, Bound()))  # sees the bound socket: nothing changes
    assert route.server().args[-2:] == ("/hal-mcp", "/hal-mcp/mcp.sock")
    await route.connect(cast(Any, Mirrored()))  # the forwarder and socket where it sees them
    assert route.server().args[-2:] == ("/hal/b3", "/hal/b3/mcp.sock")
    vm = Vm()
    await route.connect(cast(Any, vm))
    port = forward_port("alpha")
    assert vm.forwarded == [(port, tmp_path / "hive" / "mcp" / "alpha" / "mcp.sock")]
    assert route.server().args[-1] == f"tcp:127.0.0.1:{port}"
    assert 50000 <= port < 60000 and forward_port("beta") != port


async def test_a_request_the_sdk_cannot_take_gets_an_error_not_silence(hub: McpHub) -> None:
    # The SDK drops a line that does not validate: a client waited for its answer until it
    # timed out. A batch (MCP has none) and a lone surrogate get an error per request id.
    sock = await hub.serve("alpha")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write((json.dumps(INIT) + "\n" + json.dumps(READY) + "\n").encode())
    batch = [{"jsonrpc": "2.0", "id": 2, "method": "ping"}, tool_call(3, "inbox", {})]
    surrogate = json.dumps(tool_call(4, "send", {"to": "operator", "body": "\ud800"}))
    ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
    for message in (json.dumps(batch), surrogate, "[1, 2]", json.dumps(ping)):
        writer.write((message + "\n").encode())
    await writer.drain()
    replies = {}
    while 5 not in replies:
        reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        replies[reply["id"]] = reply
    assert replies[5]["result"] == {}
    for request_id in (2, 3, 4):
        error = replies[request_id]["error"]
        assert error["code"] == -32600 and error["message"].startswith("invalid request: ")
    assert "a batch" in replies[2]["error"]["message"]
    assert set(replies) == {1, 2, 3, 4, 5}
    writer.close()


async def test_a_batch_is_refused_without_validating_each_item(hub: McpHub) -> None:
    # The SDK's validation of a batch keeps an error per item and union member: one 4 MiB
    # line took ~500 MiB of the daemon. A batch is refused from its JSON alone.
    import tracemalloc

    sock = await hub.serve("alpha")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    batch = ("[" + ",".join(['{"method":"a"}'] * 40000) + "]\n").encode()  # 0.6 MB, no ids
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    tracemalloc.start()
    try:
        writer.write(batch + (json.dumps(ping) + "\n").encode())
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reply == {"jsonrpc": "2.0", "id": 9, "result": {}}
    assert peak < 25 << 20, f"{peak >> 20} MiB to refuse a 0.6 MB batch"  # ~45 validated
    writer.close()


async def test_unknown_argument_names_are_refused_cheaply_on_one_line(hub: McpHub) -> None:
    # pydantic makes an error of each unknown name: 250,000 in one call took 300 MiB and 5 s
    # of the daemon. And the name the agent chose is shown escaped and cut, on one line.
    import tracemalloc

    sock = await hub.serve("alpha")
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=1 << 22)
    writer.write((json.dumps(INIT) + "\n" + json.dumps(READY) + "\n").encode())
    await writer.drain()
    await asyncio.wait_for(reader.readline(), 10)
    many = {f"k{i}": 1 for i in range(20000)}
    calls = [tool_call(2, "inbox", many), tool_call(3, "inbox", {"a\nb" + "x" * 5000: 1})]
    tracemalloc.start()
    try:
        writer.write("".join(json.dumps(c) + "\n" for c in calls).encode())
        await writer.drain()
        replies = [json.loads(await asyncio.wait_for(reader.readline(), 20)) for _ in calls]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20, f"{peak >> 20} MiB to refuse 20,000 unknown names"  # ~4; 17 before
    texts = {r["id"]: r["result"]["content"][0]["text"] for r in replies}
    refused = "bad arguments for inbox: k0: Extra inputs are not permitted"
    assert texts[2] == refused + " (and 19999 more)"
    assert texts[3].startswith("bad arguments for inbox: a\\nbxxx") and len(texts[3]) < 200
    writer.close()


async def test_a_line_that_is_not_json_gets_a_parse_error_whatever_its_depth(
    hub: McpHub,
) -> None:
    # A line too deep to read (100,000 nested "[") or not JSON at all got no answer: the spec
    # answers unreadable input with a parse error (-32700, id null). Cheap at any depth.
    import tracemalloc

    sock = await hub.serve("alpha")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    deep = "[" * 100_000
    lines = [deep, deep + "]" * 100_000, '{"a":' * 100_000, "{not json", "   "]
    ping = {"jsonrpc": "2.0", "id": 8, "method": "ping"}
    tracemalloc.start()
    try:
        writer.write("".join(line + "\n" for line in [*lines, json.dumps(ping)]).encode())
        await writer.drain()
        replies = [json.loads(await asyncio.wait_for(reader.readline(), 10)) for _ in range(5)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": PARSE_ERROR}}
    assert replies[:4] == [error] * 4  # a blank line asks nothing: no answer
    assert replies[4] == {"jsonrpc": "2.0", "id": 8, "result": {}}
    assert peak < 8 << 20, f"{peak >> 20} MiB to refuse a 100,000-deep line"
    writer.close()


async def test_a_line_of_a_million_values_is_refused_before_it_is_validated(hub: McpHub) -> None:
    # One 4 MiB line of "{}," (1.3 million empty objects in a call's arguments) was validated
    # twice, by the server and by the SDK: 96 MiB held and 192 MiB at peak each time, from
    # each of an agent's 8 connections at once. It is refused from a count of its commas.
    import tracemalloc

    from hal9999.hive.mcp.budget import MAX_LINE
    from hal9999.hive.mcp.server import MAX_VALUES

    sock = await hub.serve("alpha")
    reader, writer = await asyncio.open_unix_connection(str(sock))
    dense = json.dumps(tool_call(2, "inbox", {"a": [{}] * ((MAX_LINE - 200) // 4)}))
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    tracemalloc.start()
    try:
        writer.write((dense + "\n" + json.dumps(ping) + "\n").encode())
        await writer.drain()
        replies = [json.loads(await asyncio.wait_for(reader.readline(), 30)) for _ in range(2)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 25 << 20, f"{peak >> 20} MiB to refuse one dense line"  # 11; 152 before
    assert replies[0]["id"] is None and replies[0]["error"]["code"] == -32600
    assert f"over {MAX_VALUES} JSON values in one line" in replies[0]["error"]["message"]
    assert replies[1] == {"jsonrpc": "2.0", "id": 9, "result": {}}
    writer.close()


async def huge(caller: Caller, args: NoArgs) -> str:
    return "x" * (1 << 20)


async def test_an_answer_over_the_bound_is_withheld_in_one_line(tmp_path: Path) -> None:
    # Answers wait in the daemon until the agent reads them (128 calls of one agent at once):
    # a tool whose answer is past the bound gives a one-line error instead.
    from hal9999.hive.mcp.tools import MAX_ANSWER_CHARS

    store = Store.open(tmp_path / "home")
    hub = McpHub(Hive(store=store, home=tmp_path / "home"),
                 extra_tools=[Tool("huge", "A long answer.", NoArgs, huge)])  # fmt: skip
    try:
        async with connect(await hub.serve("alpha")) as client:
            failed, text = await call(client, "huge")
        assert failed and text == (f"internal: huge's answer is over {MAX_ANSWER_CHARS} "
                                   "characters (see the daemon's log)")  # fmt: skip
    finally:
        await hub.close_all()
        store.close()
