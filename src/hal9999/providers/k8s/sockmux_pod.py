"""The in-pod half of :mod:`hal9999.providers.k8s.sockmux` (run as ``python3 -I -S -c``).

Listens on the unix socket paths given as arguments and carries every accepted connection
over this process's stdin (frames from the hal host) and stdout (frames to it). A frame is
``kind (1 byte) | connection id (4, big-endian) | length (4) | payload``; kinds: 1 OPEN
(payload: the socket's index), 2 DATA, 3 EOF (no more data this way), 4 CLOSE (the
connection failed: both sides drop it; once both ways ended with EOF each side drops it
without one), 5 ACK (payload: 4-byte count of DATA bytes written on), 6 READY (every
socket listens). A side sends at most ``WINDOW`` unacknowledged bytes per connection, so a
slow reader holds back only its own connection. The end of stdin (the exec stream closed)
ends every connection and removes the sockets.

Standard library only, no arguments interpolated anywhere: the file is sent as it is.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys

HEAD = struct.Struct(">BII")
OPEN, DATA, EOF, CLOSE, ACK, READY = 1, 2, 3, 4, 5, 6
MAX_PAYLOAD = 1 << 16
WINDOW = 1 << 18
MAX_CONNECTIONS = 64


class Conn:
    """One accepted connection."""

    def __init__(
        self, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.id, self.reader, self.writer = cid, reader, writer
        self.credit = WINDOW
        self.more = asyncio.Event()
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tasks: list[asyncio.Future[None]] = []


class Mux:
    """Both directions of every connection over one pair of pipes."""

    def __init__(self, out: asyncio.StreamWriter) -> None:
        self.out = out
        self.conns: dict[int, Conn] = {}
        self.next_id = 1

    def send(self, kind: int, cid: int, payload: bytes = b"") -> None:
        self.out.write(HEAD.pack(kind, cid, len(payload)) + payload)

    async def accepted(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self.conns) >= MAX_CONNECTIONS:
            writer.close()
            return
        cid = self.next_id
        self.next_id = self.next_id % 0xFFFFFFFF + 1
        conn = Conn(cid, reader, writer)
        self.conns[cid] = conn
        self.send(OPEN, cid, bytes([index]))
        conn.tasks = [
            asyncio.ensure_future(self.upload(conn)),
            asyncio.ensure_future(self.download(conn)),
        ]
        ends = await asyncio.gather(*conn.tasks, return_exceptions=True)
        # Both ways ended with EOF: the host ends its side by itself. Anything else: CLOSE.
        if self.conns.pop(cid, None) is not None and any(ends):
            self.send(CLOSE, cid)
        writer.close()

    async def upload(self, conn: Conn) -> None:
        while True:
            while conn.credit <= 0:
                conn.more.clear()
                await conn.more.wait()
            try:
                data = await conn.reader.read(min(MAX_PAYLOAD, conn.credit))
            except OSError:
                data = b""
            if not data:
                self.send(EOF, conn.id)
                return
            conn.credit -= len(data)
            self.send(DATA, conn.id, data)
            await self.out.drain()

    async def download(self, conn: Conn) -> None:
        while True:
            data = await conn.inbox.get()
            if data is None:
                if conn.writer.can_write_eof():
                    conn.writer.write_eof()
                return
            conn.writer.write(data)
            await conn.writer.drain()
            self.send(ACK, conn.id, struct.pack(">I", len(data)))

    def received(self, kind: int, cid: int, payload: bytes) -> None:
        conn = self.conns.get(cid)
        if conn is None:
            return  # a connection already gone on this side
        if kind == DATA:
            conn.inbox.put_nowait(payload)
        elif kind == EOF:
            conn.inbox.put_nowait(None)
        elif kind == ACK and len(payload) == 4:
            conn.credit += struct.unpack(">I", payload)[0]
            conn.more.set()
        elif kind == CLOSE:
            del self.conns[cid]
            for task in conn.tasks:
                task.cancel()


def _handler(mux: Mux, index: int):  # type: ignore[no-untyped-def]
    return lambda reader, writer: mux.accepted(index, reader, writer)


async def main(paths: list[str]) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", 0)
    )
    out = asyncio.StreamWriter(transport, protocol, None, loop)
    stdin = asyncio.StreamReader(limit=MAX_PAYLOAD * 2)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(0, "rb", 0))
    mux = Mux(out)
    servers = []
    for index, path in enumerate(paths):
        try:
            os.unlink(path)  # a stale socket of an earlier run (never followed: unlink)
        except FileNotFoundError:
            pass
        servers.append(await asyncio.start_unix_server(_handler(mux, index), path=path))
    mux.send(READY, 0)
    try:
        while True:
            kind, cid, size = HEAD.unpack(await stdin.readexactly(HEAD.size))
            if size > MAX_PAYLOAD:
                raise SystemExit("hal-sockmux: oversized frame from the host")
            mux.received(kind, cid, await stdin.readexactly(size))
    except asyncio.IncompleteReadError:
        pass  # the host closed the stream: the end
    finally:
        for server in servers:
            server.close()
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
