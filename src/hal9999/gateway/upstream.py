"""The gateway's upstream hop: HTTP/1.1 on kept connections, straight over asyncio streams.

A call writes its request in one piece and reads the answer as it arrives: the status line
and headers, then the body by its ``content-length``, its chunks, or (neither) until the
upstream closes. A connection whose answer was read to its end goes back to the pool of its
origin for the next call of any task; anything else (an answer cut short, ``connection:
close``) is closed. TLS is the ``ssl`` module's, verifying the upstream's certificate and
host name (against the system's CAs, or a private CA file).

Why not httpx: its transport (httpcore's connection state machine, anyio's wrappers, h11's
event objects, the request and header models) cost CPU on every call in the
gateway process, the largest share of what the gateway added to a call. What it gave that
the gateway needs is here: kept connections, TLS that verifies, timeouts, streaming, and no
cookie jar, redirects or proxy from the environment (nothing of one task's answer rides
along on another task's call).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hal9999.errors import ConfigError

CHUNK = 1 << 16
MAX_HEAD = 64 << 10
"""The largest status line and headers an upstream may send."""
CONNECT_S, READ_S, WRITE_S = 15.0, 600.0, 60.0
MAX_IDLE = 64
"""Kept connections per origin."""
_NO_BODY = frozenset({204, 304})


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol.

    ``sent`` is False when the request certainly never reached it (the connection was not
    made): then the call is safe to repeat."""

    def __init__(
        self, text: str, *, sent: bool, verify_failed: bool = False, unanswered: bool = False
    ) -> None:
        super().__init__(text)
        self.sent = sent
        self.verify_failed = verify_failed
        self.unanswered = unanswered
        """The connection ended before a single byte of an answer (a kept connection the
        upstream had closed as it was taken)."""


@dataclass(frozen=True)
class Origin:
    """Where a call goes: scheme, host and port (a pool per origin)."""

    tls: bool
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of ``url`` (``http`` or ``https``)."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        return cls(tls, parts.hostname, parts.port or (443 if tls else 80))

    @property
    def authority(self) -> str:
        """The ``host`` header's value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(eq=False)
class _Connection:
    origin: Origin
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        # An upstream that closed a kept connection has fed its EOF by now (or left bytes
        # nobody asked for): either way the connection cannot carry another call.
        return (
            not self.writer.is_closing() and not self.reader.at_eof() and not _buffered(self.reader)
        )


def _buffered(reader: asyncio.StreamReader) -> int:
    return len(getattr(reader, "_buffer", b""))


@dataclass(eq=False)
class UpstreamResponse:
    """An upstream's answer: status and headers read, the body read on demand."""

    status: int
    headers: list[tuple[str, str]]
    """Header names lower-cased, in the upstream's order."""
    _conn: _Connection
    _pool: UpstreamPool
    _length: int | None
    """Bytes of body left (None: chunked, or until the upstream closes)."""
    _chunked: bool
    _keep: bool
    _chunk_left: int = 0
    _done: bool = False
    _closed: bool = field(default=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    declared: int | None = None
    """The body's length as declared (None: chunked, or until the upstream closes)."""

    async def read(self) -> bytes:
        """The next bytes of the body as they arrive; ``b""`` at its end."""
        if self._done:
            return b""
        try:
            if self.ready():  # no wait: no timer to arm
                data = await self._read()
            else:
                async with asyncio.timeout(READ_S):
                    data = await self._read()
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await self._abandon()
            raise UpstreamError(f"the answer broke off: {type(exc).__name__}", sent=True) from exc
        except (ValueError, asyncio.LimitOverrunError) as exc:  # a bad chunk size line
            await self._abandon()
            raise UpstreamError(f"bad chunked body: {exc}", sent=True) from exc
        if not data:
            self._done = True
        return data

    def ready(self) -> bool:
        """Whether the next :meth:`read` returns at once (body bytes are already here)."""
        return not self._chunked and (self._done or _buffered(self._conn.reader) > 0)

    async def _read(self) -> bytes:
        reader = self._conn.reader
        if not self._chunked:
            if self._length is None:  # until the upstream closes
                return await reader.read(CHUNK)
            if self._length == 0:
                return b""
            data = await reader.read(min(CHUNK, self._length))
            if not data:
                raise EOFError
            self._length -= len(data)
            return data
        if self._chunk_left == 0:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError("negative chunk size")
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers: dropped
                return b""
            self._chunk_left = size
        data = await reader.read(min(CHUNK, self._chunk_left))
        if not data:
            raise EOFError
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        return data

    async def _abandon(self) -> None:
        self._keep = False
        await self.aclose()

    async def aclose(self) -> None:
        """Done with the answer: a connection read to its end goes back to the pool."""
        if self._closed:
            return
        self._closed = True
        if self._done and self._keep:
            self._pool.release(self._conn)
        else:
            self._conn.writer.close()


def ca_file_error(ca_file: object, exc: OSError) -> ConfigError:
    """Why ``[gateway] ca_file`` cannot be used (missing, unreadable, no PEM certificate)."""
    return ConfigError(
        f"[gateway] ca_file {ca_file} cannot be used: {exc.strerror or exc}",
        hint="point it at a PEM file of CA certificates, or remove it",
    )


class UpstreamPool:
    """Kept connections per origin; one pool per TLS trust (system CAs, or a CA file)."""

    def __init__(self, ca_file: str | None = None) -> None:
        self.context = ssl.create_default_context()
        if ca_file is not None:
            self.context.load_verify_locations(cafile=ca_file)
        self._idle: dict[Origin, list[_Connection]] = {}
        self.opened = 0
        """Connections made so far (tests: kept connections are reused)."""

    def release(self, conn: _Connection) -> None:
        """Keep ``conn`` for the next call to its origin."""
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < MAX_IDLE and conn.usable():
            idle.append(conn)
        else:
            conn.writer.close()

    async def aclose(self) -> None:
        """Close every kept connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.writer.close()
        self._idle.clear()

    async def request(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send one request and read the answer's head; the body is read by the caller."""
        origin = Origin.of(url)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"host: {origin.authority}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method not in ("GET", "HEAD"):
            lines.append(f"content-length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        while True:
            conn, reused = await self._connection(origin)
            try:
                return await self._exchange(conn, method, head, body)
            except UpstreamError as exc:
                conn.writer.close()
                # A kept connection the upstream closed just as it was taken: nothing of the
                # answer came back, so the request is sent again on a new connection (once:
                # the next connection is a fresh one).
                if reused and exc.unanswered:
                    continue
                raise
            except BaseException:  # cancelled (the task ended): the connection goes too
                conn.writer.close()
                raise

    async def _connection(self, origin: Origin) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.writer.close()
        try:
            async with asyncio.timeout(CONNECT_S):
                reader, writer = await asyncio.open_connection(
                    origin.host, origin.port, limit=MAX_HEAD,
                    ssl=self.context if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )  # fmt: skip
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamError(f"certificate: {exc.verify_message}", sent=False,
                                verify_failed=True) from exc  # fmt: skip
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect: {type(exc).__name__}", sent=False) from exc
        self.opened += 1
        return _Connection(origin, reader, writer), False

    async def _exchange(
        self, conn: _Connection, method: str, head: bytes, body: bytes
    ) -> UpstreamResponse:
        reader, writer = conn.reader, conn.writer
        got_any = False
        try:
            async with asyncio.timeout(WRITE_S):
                writer.write(head + body if len(body) < CHUNK else head)
                if len(body) >= CHUNK:
                    writer.write(body)
                await writer.drain()
            while True:
                async with asyncio.timeout(READ_S):
                    raw = await reader.readuntil(b"\r\n\r\n")
                got_any = True
                status, headers = _parse_head(raw)
                if status >= 200 or status == 101:
                    break  # 1xx (100 continue, 103 early hints) precede the real answer
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:  # fmt: skip
            unanswered = not got_any and not isinstance(exc, TimeoutError)
            raise UpstreamError(f"no answer: {type(exc).__name__}", sent=True,
                                unanswered=unanswered) from exc  # fmt: skip
        keep = not any(n == "connection" and "close" in v.lower() for n, v in headers)
        chunked = any(n == "transfer-encoding" and "chunked" in v.lower() for n, v in headers)
        length: int | None = None
        if method == "HEAD" or status in _NO_BODY or status < 200:
            length, chunked = 0, False
        elif not chunked:
            declared = [v for n, v in headers if n == "content-length"]
            if declared and declared[0].strip().isdigit():
                length = int(declared[0])
            else:
                keep = False  # the body ends when the upstream closes
        response = UpstreamResponse(status, headers, conn, self, length, chunked, keep)
        response.declared = length
        if length == 0:
            response._done = True
        return response


def _parse_head(raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 status line: {lines[0][:80]!r}")
    status = int(rest[:3])
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("bad header line")
        headers.append((name.lower(), value.strip()))
    return status, headers
