"""A fake qemu guest on the unix socket QEMU would expose for the exec agent's port, for the
host side's tests (tests/providers/test_qemuagent*.py): no VM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from hal9999.providers.qemu import agent as qemuagent
from hal9999.providers.qemu.agent import frame
from hal9999.providers.qemu.vm import RunDir

Guest = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    return head[:1], await reader.readexactly(int.from_bytes(head[1:], "big"))


async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    kind, payload = await read_frame(reader)
    assert kind == b"H" and payload[:8] == qemuagent.MAGIC
    writer.write(frame(b"A", payload[8:]))
    kind, body = await read_frame(reader)
    assert kind == b"R"
    return body


@contextlib.asynccontextmanager
async def fake_guest(run: RunDir, guest: Guest, port: int = 0) -> AsyncIterator[list[bytes]]:
    """Serve ``guest`` on the agent port; yields the frame types the host sent."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await guest(reader, writer)
            while True:
                kind, _ = await read_frame(reader)
                seen.append(kind)
                if kind == b"K":
                    writer.write(frame(b"X", (137).to_bytes(4, "big")))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, str(run.agent(port)))
    try:
        yield seen
    finally:
        server.close()


async def run_cmd(run: RunDir, pings: bool = True, **kwargs: object) -> tuple[int, bytes, bytes]:
    """Run a command on port 0; ``pings``: its image says its agent answers pings."""
    port = qemuagent.claim(run, 1, pings=pings)
    assert port is not None
    try:
        return await qemuagent.run(port, ["--", "x"], {}, stdin=None, time_limit=None,
                                   what="x", **kwargs)  # type: ignore[arg-type]  # fmt: skip
    finally:
        port.release()
