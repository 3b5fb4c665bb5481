"""The agent's side of the gateway: an HTTP/1.1 request read, an answer written, nothing more.

The agent is hostile: a request head is at most the stream's limit (64 KiB), every header
name is a token, no value holds a control character (a bare CR or LF would smuggle a
header into the upstream hop), the method is a token and the target visible ASCII in origin
form (``/path``) or absolute form (``http(s)://host/path``: the host is ignored), the body
is framed by one ``content-length`` or by ``transfer-encoding: chunked`` (never both) and is
at most :data:`MAX_REQUEST_BODY`. Anything else is a :class:`BadRequest`: a 400-class answer
and the connection closed.

Why not h11: its event objects, state machine and header validation per event cost
CPU on every call in the gateway process (a third of what the gateway added), for a peer that
sends one kind of request. The checks that matter are the ones above.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

MAX_REQUEST_BODY = 64 << 20
"""The largest request an agent may send (long conversations with images stay below this)."""
BODY_PIECE = 1 << 20
"""A body is read (and counted by its :data:`Hold`) this much at a time: counted as it
arrives, not as declared, since the gateway-wide bound is shared by every task (a head
declaring 64 MiB, then nothing, took 64 MiB of it for the 60 s a request may take)."""
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"(?:/|https?://)[\x21-\x7e]*")
"""A target the upstream's origin is joined to: anything else (``@host/...``, ``:port/...``,
``.domain/...``) would make the joined URL name a host of the agent's choice."""
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_NO_BODY = frozenset({204, 304})


class BadRequest(Exception):
    """A request the gateway will not read: answered with ``status``, then closed."""

    def __init__(self, status: int, text: str, code: str = "bad_request") -> None:
        super().__init__(text)
        self.status = status
        self.code = code


@dataclass
class Request:
    """One request of the agent, its body read whole."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    """Names lower-cased, in the agent's order."""
    body: bytes
    keep_alive: bool
    """Whether the connection may carry another request after this one's answer."""


Hold = Callable[[str, list[tuple[str, str]], int], None]
"""Called with the target, the headers and a size before that many more bytes of a body are
read (each :data:`BODY_PIECE` of it); raises :class:`BadRequest` to refuse."""


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: Hold | None = None
) -> Request | None:
    """The next request on the connection; None when the agent closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest(400, "the request head was cut short") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadRequest(431, "the request head is too large") from exc
    lines = head.lstrip(b"\r\n")[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise BadRequest(400, "a malformed request line")
    if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(505, "only HTTP/1.1 is spoken here")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        raw_name, sep, raw = line.partition(b":")
        value = raw.strip(b" \t").decode("latin-1")
        if not sep or not _TOKEN.fullmatch(raw_name) or _CONTROL.search(value):
            raise BadRequest(400, "a malformed header line")
        headers.append((raw_name.decode("ascii").lower(), value))
    keep_alive = parts[2] == b"HTTP/1.1"
    length, chunked, expect = None, False, False
    for name, value in headers:
        if name == "content-length":
            if not value.isascii() or not value.isdigit():
                raise BadRequest(400, "a bad content-length")
            if len(value.lstrip("0")) > 12:  # int() refuses past 4300 digits: a traceback
                raise BadRequest(413, "the request body is too large")
            if length not in (None, int(value)):
                raise BadRequest(400, "a bad content-length")
            length = int(value)
        elif name == "transfer-encoding":
            if value.lower() != "chunked" or chunked:
                raise BadRequest(501, "only chunked transfer-encoding is understood")
            chunked = True
        elif name == "connection" and "close" in value.lower():
            keep_alive = False
        elif name == "expect" and value.lower() == "100-continue":
            expect = True
    if chunked and length is not None:
        raise BadRequest(400, "both content-length and transfer-encoding")
    if length is not None and length > MAX_REQUEST_BODY:
        raise BadRequest(413, "the request body is too large")
    target = parts[1].decode("ascii")

    def more(size: int) -> None:
        if hold is not None:
            hold(target, headers, size)

    first = min(length or 0, BODY_PIECE)
    if first:
        more(first)  # refused before the agent is told to go on
    if expect and (chunked or length):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        if chunked:
            body = await _chunked_body(reader, more)
        else:
            body = await _pieces(reader, length or 0, more, held=first)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise BadRequest(400, "the request body was cut short") from exc
    return Request(parts[0].decode("ascii"), target, headers, body, keep_alive)


async def _pieces(
    reader: asyncio.StreamReader, size: int, hold: Callable[[int], None], held: int = 0
) -> bytes:
    """``size`` bytes of a body, read :data:`BODY_PIECE` at a time, each held before it is
    read (the first ``held`` bytes were held already)."""
    parts: list[bytes] = []
    done = 0
    while done < size:
        piece = min(BODY_PIECE, size - done)
        if piece > held:
            hold(piece - held)
        held = 0
        parts.append(await reader.readexactly(piece))
        done += piece
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _chunked_body(reader: asyncio.StreamReader, hold: Callable[[int], None]) -> bytes:
    body = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_line):
            raise BadRequest(400, "a bad chunk size")
        size = int(size_line, 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers: dropped
            return bytes(body)
        if len(body) + size > MAX_REQUEST_BODY:
            raise BadRequest(413, "the request body is too large")
        body += await _pieces(reader, size, hold)
        if await reader.readexactly(2) != b"\r\n":
            raise BadRequest(400, "a chunk not followed by CRLF")


class Answer:
    """Writes one answer to the agent: a head, then the body framed by its length (when
    known) or in chunks."""

    def __init__(self, writer: asyncio.StreamWriter, request: Request | None) -> None:
        self.writer = writer
        self.keep_alive = request is not None and request.keep_alive
        self._head_only = request is not None and request.method == "HEAD"
        self._chunked = False
        self._held = b""

    def start(
        self, status: int, headers: list[tuple[str, str]], length: int | None, *, hold: bool = False
    ) -> None:
        """The status line and headers (``headers`` carry no framing of their own); with
        ``hold`` they are sent with the first bytes of the body (one write instead of two)."""
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        lines += [f"{n}: {v}" for n, v in headers if not _CONTROL.search(n + v)]
        if status in _NO_BODY:
            self._head_only = True
        elif length is not None:
            lines.append(f"content-length: {length}")
        elif self.keep_alive:
            lines.append("transfer-encoding: chunked")
            self._chunked = not self._head_only
        # else: the body ends when the connection closes (an HTTP/1.0 agent)
        if not self.keep_alive:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if hold:
            self._held = head
        else:
            self.writer.write(head)

    def data(self, chunk: bytes) -> None:
        """The next bytes of the body."""
        if self._head_only or not chunk:
            return
        if self._chunked:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self._held:
            chunk, self._held = self._held + chunk, b""
        self.writer.write(chunk)

    def end(self) -> None:
        """The end of the body (and the head, if it is still held)."""
        tail = b"0\r\n\r\n" if self._chunked else b""
        if self._held or tail:
            self.writer.write(self._held + tail)
            self._held = b""

    async def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """A complete answer with a known body (a refusal)."""
        self.start(status, headers, len(body))
        self.data(body)
        await self.writer.drain()
