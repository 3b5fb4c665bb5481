"""The hal host's unix sockets (the LLM gateway's ``llm.sock`` and ``egress.sock``, an MCP
channel) answering inside a pod, over one exec stream: a pod has no ssh to forward them.

For the relay's whole run, one long-lived exec in the pod runs :mod:`.sockmux_pod` (a
constant script, sent on the stream's stdin; only paths travel in the exec URL). It listens
on each socket's path in the pod's mirror (where the agent's in-sandbox forwarder looks:
``$HAL_GATEWAY_DIR/llm.sock``) and carries every connection it accepts over the stream as
frames (see :mod:`.sockmux_pod` for the format): ``OPEN`` names the socket by its index in
the list hal sent, so the host opens only its own sockets, never a path the pod chose.
Frames are bounded (:data:`MAX_PAYLOAD`), every connection has its own window
(:data:`WINDOW` unacknowledged bytes each way: backpressure without one slow connection
holding the others), at most :data:`MAX_CONNECTIONS` are open, and anything else the pod
sends (it is the agent's ground) ends the channel. The end of the stream (the relay
stopping, the pod gone) closes every connection. No network of the pod is used: the
NetworkPolicy of a network-``none`` sandbox denies all egress, and the bytes go through the
API server's exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999.errors import HalError
from hal9999.gateway.forwarder import connect_unix
from hal9999.providers.host.exec import EXEC_MARKER_VAR
from hal9999.providers.ssh import mirror

if TYPE_CHECKING:
    from hal9999.providers.k8s.sandbox import KubeSandbox

HEAD = struct.Struct(">BII")
OPEN, DATA, EOF, CLOSE, ACK, READY = 1, 2, 3, 4, 5, 6
MAX_PAYLOAD = 1 << 16
"""Largest payload of one frame (the in-pod script's figure too)."""
WINDOW = 1 << 18
"""Unacknowledged DATA bytes one side may send on one connection."""
MAX_CONNECTIONS = 64
READY_TIMEOUT_S = 20.0
BOOT = ('n=$1; m=$2; shift 2; if command -v python3 >/dev/null 2>&1; then '
        's=$(head -c "$n"); head -c "$m" >/dev/null; exec python3 -I -S -c "$s" "$@"; '
        'else head -c "$n" >/dev/null; exec perl -e "$(head -c "$m")" "$@"; fi')  # fmt: skip
"""In the pod: read both scripts (their lengths in argv) from stdin, run the python one (the
perl one where the image has no python3) on the rest."""
PYTHON = (Path(__file__).parent / "sockmux_pod.py").read_bytes()
PERL = (Path(__file__).parent / "sockmux_pod.pl").read_bytes()


class MuxProtocolError(ValueError):
    """The pod sent something the protocol does not allow."""


@dataclass(frozen=True)
class Frame:
    """One frame of the channel."""

    kind: int
    """OPEN, DATA, EOF, CLOSE, ACK or READY."""
    conn: int
    """The connection's id (0 for READY)."""
    payload: bytes = b""
    """DATA's bytes, OPEN's socket index, ACK's count."""


def encode(frame: Frame) -> bytes:
    """The frame's bytes on the stream."""
    return HEAD.pack(frame.kind, frame.conn, len(frame.payload)) + frame.payload


_SIZES = {OPEN: (1, 1), DATA: (1, MAX_PAYLOAD), EOF: (0, 0), CLOSE: (0, 0), ACK: (4, 4),
          READY: (0, 0)}  # fmt: skip


class Decoder:
    """Frames out of a byte stream cut anywhere; hostile input raises
    :class:`MuxProtocolError` as soon as a header is wrong (never buffering more than one
    frame's worth)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """The frames ``data`` completes."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEAD.size:
            kind, conn, size = HEAD.unpack_from(self._buffer)
            if kind not in _SIZES:
                raise MuxProtocolError(f"unknown frame kind {kind}")
            low, high = _SIZES[kind]
            if not low <= size <= high:
                raise MuxProtocolError(f"frame kind {kind} with {size} bytes")
            if (kind == READY) != (conn == 0):
                raise MuxProtocolError("connection id 0 is READY's only")
            if len(self._buffer) < HEAD.size + size:
                break
            payload = bytes(self._buffer[HEAD.size : HEAD.size + size])
            del self._buffer[: HEAD.size + size]
            frames.append(Frame(kind, conn, payload))
        return frames


@dataclass
class _Conn:
    writer: asyncio.StreamWriter | None = None
    """None while connecting (what the pod sends meanwhile waits in the inbox)."""
    reader: asyncio.StreamReader | None = None
    credit: int = WINDOW
    """Bytes this side may still send to the pod."""
    owed: int = 0
    """Bytes the pod sent that this side has not acknowledged yet."""
    more: asyncio.Event = field(default_factory=asyncio.Event)
    inbox: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class HostMux:
    """The host's half: frames from the pod in (:meth:`received`), frames to it out
    (:meth:`outgoing`), one host unix socket per index."""

    def __init__(self, sockets: list[str]) -> None:
        self._sockets = sockets
        self._conns: dict[int, _Conn] = {}
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._decoder = Decoder()
        self._connecting: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()

    def _send(self, kind: int, conn: int, payload: bytes = b"") -> None:
        # Never waits: the reader must keep reading whatever the writer does; DATA is
        # bounded by the windows, every other frame by the DATA it answers.
        self._out.put_nowait(encode(Frame(kind, conn, payload)))

    async def outgoing(self) -> AsyncIterator[bytes]:
        """What goes to the pod's stdin: the in-pod scripts, then frames until :meth:`end`."""
        yield PYTHON + PERL
        while (data := await self._out.get()) is not None:
            yield data

    def end(self) -> None:
        """Close the stream to the pod (its script then removes its sockets and exits)."""
        self._out.put_nowait(None)

    def received(self, data: bytes) -> None:
        """Bytes from the pod; raises :class:`MuxProtocolError` on a breach."""
        for frame in self._decoder.feed(data):
            self._frame(frame)

    def _frame(self, frame: Frame) -> None:
        if frame.kind == READY:
            self.ready.set()
            return
        if frame.kind == OPEN:
            index = frame.payload[0]
            if frame.conn in self._conns or index >= len(self._sockets):
                raise MuxProtocolError(f"bad OPEN of connection {frame.conn}")
            if len(self._conns) >= MAX_CONNECTIONS:
                raise MuxProtocolError(f"more than {MAX_CONNECTIONS} connections")
            fresh = self._conns[frame.conn] = _Conn()
            task = asyncio.create_task(self._connect(frame.conn, fresh, self._sockets[index]))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
            return
        conn = self._conns.get(frame.conn)
        if conn is None:
            return  # gone on this side already
        if frame.kind == DATA:
            conn.owed += len(frame.payload)
            if conn.owed > WINDOW:
                raise MuxProtocolError(f"connection {frame.conn} overran its window")
            conn.inbox.put_nowait(frame.payload)
        elif frame.kind == EOF:
            conn.inbox.put_nowait(None)
        elif frame.kind == ACK:
            conn.credit += struct.unpack(">I", frame.payload)[0]
            if conn.credit > WINDOW:
                raise MuxProtocolError(f"connection {frame.conn} acknowledged unsent bytes")
            conn.more.set()
        elif frame.kind == CLOSE:
            self._drop(frame.conn)

    async def _connect(self, cid: int, conn: _Conn, path: str) -> None:
        try:
            # Waits (bounded) for room in the socket's backlog: asyncio's own connect took a
            # full backlog's EAGAIN for a connect in progress (an unconnected socket).
            conn.reader, conn.writer = await asyncio.open_unix_connection(
                sock=await connect_unix(path), limit=MAX_PAYLOAD)  # fmt: skip
        except OSError:
            if self._conns.pop(cid, None) is not None:
                self._send(CLOSE, cid)
            return
        if self._conns.get(cid) is not conn:  # closed while connecting
            conn.writer.close()
            return
        conn.tasks = [asyncio.create_task(self._upload(cid, conn)),
                      asyncio.create_task(self._download(cid, conn))]  # fmt: skip
        try:
            ends = await asyncio.gather(*conn.tasks, return_exceptions=True)
            # Both ways ended with EOF: the pod ends its side by itself (a CLOSE now could
            # cut data it has still to write on). Anything else: CLOSE.
            if self._conns.pop(cid, None) is not None and any(ends):
                self._send(CLOSE, cid)
        finally:
            for task in conn.tasks:
                task.cancel()
            conn.writer.close()

    async def _upload(self, cid: int, conn: _Conn) -> None:
        """Host socket to pod, within the window."""
        assert conn.reader is not None
        while True:
            while conn.credit <= 0:
                conn.more.clear()
                await conn.more.wait()
            try:
                data = await conn.reader.read(min(MAX_PAYLOAD, conn.credit))
            except OSError:
                data = b""
            if not data:
                self._send(EOF, cid)
                return
            conn.credit -= len(data)
            self._send(DATA, cid, data)

    async def _download(self, cid: int, conn: _Conn) -> None:
        """Pod to host socket, acknowledged once written on."""
        assert conn.writer is not None
        while (data := await conn.inbox.get()) is not None:
            conn.writer.write(data)
            await conn.writer.drain()
            conn.owed -= len(data)
            self._send(ACK, cid, struct.pack(">I", len(data)))
        if conn.writer.can_write_eof():
            conn.writer.write_eof()

    def _drop(self, cid: int) -> None:
        conn = self._conns.pop(cid, None)
        if conn is not None:
            for task in conn.tasks:
                task.cancel()

    def close_all(self) -> None:
        """Every connection ends (the stream is gone)."""
        for task in list(self._connecting):
            task.cancel()
        for cid in list(self._conns):
            self._drop(cid)


class SocketChannel:
    """The channel of one relay run; :meth:`start`, then :meth:`stop` at the end."""

    def __init__(self, sandbox: KubeSandbox, say: Callable[[str], None]) -> None:
        self._sandbox = sandbox
        self._say = say
        self._token = secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None
        self._mux: HostMux | None = None
        self._stderr = b""

    def _pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for mount in self._sandbox.record.mounts:
            if mount.host is not None:
                for name, path in mirror.sockets_in(mirror.host_dir(mount.host)):
                    pairs.append((f"{mount.remote}/{name}", path))
        return pairs[:255]  # OPEN names the socket in one byte

    async def start(self) -> None:
        """Listen in the pod on every host socket's path; returns once they answer (or, on
        failure, after one line on stderr: the agent runs all the same, without them)."""
        pairs = await asyncio.to_thread(self._pairs)
        if not pairs:
            return
        self._mux = mux = HostMux([host for _, host in pairs])
        argv = ["env", f"{EXEC_MARKER_VAR}={self._token}", "sh", "-c", BOOT, "hal-sockmux",
                str(len(PYTHON)), str(len(PERL)), *(inside for inside, _ in pairs)]  # fmt: skip
        self._task = asyncio.create_task(self._serve(mux, argv))
        ready = asyncio.create_task(mux.ready.wait())
        try:
            await asyncio.wait({ready, self._task}, timeout=READY_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            ready.cancel()
        if not mux.ready.is_set():
            why = self._stderr.decode("utf-8", "replace").strip() or "no answer"
            self._say(
                f"the hal host's sockets (the LLM gateway) do not answer in the pod "
                f"({why}); its image needs python3 or perl; the agent runs without them"
            )

    async def _serve(self, mux: HostMux, argv: list[str]) -> None:
        try:
            events = self._sandbox.raw(argv, mux.outgoing())
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.kind == "stdout":
                        mux.received(event.data)
                    elif event.kind == "stderr":
                        self._stderr = (self._stderr + event.data)[-500:]
        except MuxProtocolError as exc:
            self._say(f"the pod broke the socket channel's protocol ({exc}); channel closed")
        except HalError as exc:
            self._say(f"the socket channel into the pod ended: {exc.one_line()}")
        finally:
            mux.close_all()

    async def stop(self) -> None:
        """End the channel: every connection closes and the in-pod listener goes."""
        if self._mux is None or self._task is None:
            return
        self._mux.end()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(self._task)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        with contextlib.suppress(HalError, OSError, TimeoutError):
            async with asyncio.timeout(20):  # kubelet does not kill an exec whose stream went
                await self._sandbox.kill(EXEC_MARKER_VAR, self._token)
