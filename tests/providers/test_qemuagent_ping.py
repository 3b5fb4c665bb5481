"""The exec agent's keep-alive against guests that stop answering: a command whose guest
sends nothing, no output and no pong, past the deadline fails instead of hanging; an image
built before pings is not taken for hung (no VM: fake guests on the port's socket)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tests.providers.qemu_guests import Guest, fake_guest, hello, read_frame, run_cmd

from hal9999.errors import ExecError
from hal9999.providers.qemu import agent as qemuagent
from hal9999.providers.qemu.agent import frame
from hal9999.providers.qemu.vm import RunDir


async def test_a_guest_that_stops_answering_fails_its_command_within_a_deadline(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hung guest kernel (or a stopped QEMU) held `prime` and the file helpers forever:
    # the pings went out, nothing came back, and nothing noticed.
    monkeypatch.setattr(qemuagent, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(qemuagent, "ANSWER_S", 0.5)
    monkeypatch.setattr(qemuagent, "KILL_S", 0.2)
    pings: list[bytes] = []
    hung: list[bool] = []

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        # A quiet command of a live guest lives on past ANSWER_S, its pings answered (20 of
        # them: about 1 s)...
        while len(pings) < 20:
            kind, payload = await read_frame(reader)
            if kind == b"P":
                pings.append(payload)
                writer.write(frame(b"p", payload))
        hung.append(True)
        await asyncio.sleep(3600)  # ...then it hangs: nothing answered, not even the kill

    async with fake_guest(run_dir, guest):
        # Within the (generous) bound, while the guest hangs for an hour: the deadline did it.
        with pytest.raises(ExecError) as caught:
            async with asyncio.timeout(60):
                await run_cmd(run_dir)
    assert caught.value.message == (
        "VM vm's exec agent answered nothing for 0.5s, not even a ping: its guest is hung; "
        "the command was abandoned"
    )
    assert hung, "abandoned while its guest still answered its pings"
    assert len(pings) >= 5 and all(len(ping) == qemuagent.PING for ping in pings)
    assert qemuagent.claim(run_dir, 1) is not None, "the port was released"


async def test_a_guest_that_never_answers_a_ping_fails_its_command_within_a_deadline(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its image says its agent answers pings: one that answers none from the start is hung.
    monkeypatch.setattr(qemuagent, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(qemuagent, "ANSWER_S", 0.3)

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)

    async with fake_guest(run_dir, guest) as seen:
        with pytest.raises(ExecError, match=r"0\.3s, no ping at all: its guest is hung") as caught:
            async with asyncio.timeout(5):
                await run_cmd(run_dir)
    assert caught.value.hint == "stop or destroy the sandbox"
    assert b"P" in seen and b"K" in seen


def quiet_old_agent(quiet_s: float) -> Guest:
    """An agent built before pings (it takes `P` for a no-op) running a command that prints
    nothing for ``quiet_s``, then its output and status 0."""

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        await asyncio.sleep(quiet_s)
        writer.write(frame(b"O", b"done") + frame(b"X", bytes(4)))
        await writer.drain()

    return guest


async def test_a_quiet_command_of_an_image_built_before_pings_is_not_taken_for_hung(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An image built before pings answers none: every command quiet for ANSWER_S (a build,
    # an agent thinking, a sleep) failed on it once hal took silence for a hung guest.
    monkeypatch.setattr(qemuagent, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(qemuagent, "ANSWER_S", 0.3)
    async with fake_guest(run_dir, quiet_old_agent(1.0)) as seen:
        async with asyncio.timeout(5):
            assert await run_cmd(run_dir, pings=False) == (0, b"done", b"")
    assert seen.count(b"P") >= 5 and b"K" not in seen, "pinged all along, never killed"
    # The same guest on an image that says its agent answers pings is taken for hung.
    async with fake_guest(run_dir, quiet_old_agent(1.0)):
        with pytest.raises(ExecError, match="no ping at all: its guest is hung"):
            async with asyncio.timeout(5):
                await run_cmd(run_dir, pings=True)


async def test_an_agent_that_has_answered_a_ping_is_taken_for_hung_whatever_its_image_says(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An image whose meta.json does not say its agent pings (built before the field was
    # written) but whose agent does: once it has answered, its silence means a hang.
    monkeypatch.setattr(qemuagent, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(qemuagent, "ANSWER_S", 0.3)
    monkeypatch.setattr(qemuagent, "KILL_S", 0.2)

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        while (ping := await read_frame(reader))[0] != b"P":
            pass
        writer.write(frame(b"p", ping[1]))
        await asyncio.sleep(3600)  # then it hangs

    async with fake_guest(run_dir, guest):
        with pytest.raises(ExecError, match=r"0\.3s, not even a ping: its guest is hung"):
            async with asyncio.timeout(60):
                await run_cmd(run_dir, pings=False)


async def test_a_port_whose_backlog_is_full_is_connected_again_not_taken_as_connected(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QEMU stopped (or slow to take the next connection): past its backlog of one, asyncio
    # took a socket that connect() left unconnected for connected, and its read failed
    # with EINVAL, a bare OSError out of exec.
    path = str(run_dir.agent(0))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    queued = []
    while True:  # fill the backlog
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:
            client.close()
            break
        queued.append(client)
    real = asyncio.open_unix_connection
    attempts = 0

    async def honest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await hello(reader, writer)
            while (await read_frame(reader))[0] != b"i":
                pass
            writer.write(frame(b"O", b"ok") + frame(b"X", bytes(4)))
            await writer.drain()
            await reader.read()
        finally:
            writer.close()

    servers: list[asyncio.Server] = []

    async def connect(*args: object, **kwargs: object) -> object:
        nonlocal attempts
        attempts += 1
        if attempts == 2:  # QEMU goes on: takes the queued ones, then serves
            for client in queued:
                client.close()
            while True:
                listener.setblocking(False)
                try:
                    listener.accept()[0].close()
                except BlockingIOError:
                    break
            servers.append(await asyncio.start_unix_server(honest, sock=listener))
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "open_unix_connection", connect)
    try:
        assert await run_cmd(run_dir) == (0, b"ok", b"")
    finally:
        for server in servers:
            server.close()
        listener.close()
    assert attempts >= 2
