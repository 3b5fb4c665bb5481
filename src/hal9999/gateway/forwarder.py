"""The in-sandbox forwarder: ``127.0.0.1:PORT`` inside the sandbox to the gateway's unix socket.

Run by the agent's launcher as ``python3 forwarder.py PORT SOCKET [PORT SOCKET ...]``, inside
the same bwrap exec as the agent (an exec has its own network namespace, or one per task
under a keeper, so a listener started by another exec might be invisible; and it ends with
the agent's exec). It binds first, then forks: the parent exits 0
once the ports accept connections, so the launcher can ``exec`` the agent right after; the
child serves until the launcher's process (which became the agent) is gone. A PORT of 0
takes a free port the system picks, printed on stdout (one line per 0, in order) before the
parent exits: for tests, which must not pick a port that another process may take first.

Dependency-free on purpose (the standard library of the sandbox's ``python3``): the file is
copied as it is into the gateway's channel directory, read-only inside every sandbox. It
carries bytes only; the placeholder token, the checks and the real key live on the host.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

CHUNK = 1 << 16
CONNECT_S = 10.0
"""How long a connection waits for room in the gateway's listen backlog before it is answered
:data:`BUSY`. Past the backlog a unix connect fails at once (EAGAIN); asyncio took that for a
connect in progress and handed back an unconnected socket, so the agent's call was closed
with no answer at all."""
_BUSY_BODY = (
    b'{"type": "error", "error": {"type": "overloaded_error", "code": "gateway_busy", '
    b'"message": "hal gateway: busy, try again"}}'
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)
"""The answer when the gateway cannot be reached: a 503 the agents' clients retry."""


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction of a connection, up to its end (passed on as EOF where it can be).
    The host's egress proxy pumps with this one too."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _serve_one(
    path: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        up_r, up_w = await asyncio.open_unix_connection(sock=await connect_unix(path))
    except OSError:
        await _busy(client_r, client_w)
        return
    sock = client_w.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.gather(pump(client_r, up_w), pump(up_r, client_w))
    for w in (up_w, client_w):
        w.close()


async def _busy(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    """Answer :data:`BUSY`, then read what the client still sends (a close with its request
    unread would reset the connection, and the answer with it)."""
    try:
        client_w.write(BUSY)
        client_w.write_eof()
        await client_w.drain()
        await asyncio.wait_for(_drain_reader(client_r), CONNECT_S)  # 3.11's timeout: newer
    except (OSError, asyncio.TimeoutError):  # noqa: UP041 (a sandbox's python may be < 3.11)
        pass
    client_w.close()


async def _drain_reader(reader: asyncio.StreamReader) -> None:
    while await reader.read(CHUNK):
        pass


def connect_at(sock: socket.socket, path: str) -> None:
    """``sock.connect(path)`` for a path of any length: one past ``sun_path``'s 107 bytes
    (a deep ``HAL_HOME``'s ``egress.sock``, reached from the host) is connected through a
    descriptor of its directory. Host code calls ``hal9999.unixsock.connect``, its twin:
    this file is copied into sandboxes and stays dependency-free."""
    if len(os.fsencode(path)) <= 107:
        sock.connect(path)
        return
    head, name = os.path.split(path)
    directory = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{name}")
    finally:
        os.close(directory)


async def connect_unix(path: str) -> socket.socket:
    """A socket connected to ``path``, waiting up to :data:`CONNECT_S` for room in its
    backlog (OSError past that, or when nothing listens)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_S
    delay = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            connect_at(sock, path)
            return sock
        except BlockingIOError:  # the backlog is full: the gateway has not accepted yet
            sock.close()
            if loop.time() + delay > deadline:
                raise
        except OSError:
            sock.close()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def _watch(pid: int) -> None:
    # The launcher exec'd the agent under this pid: when it is gone, so is the forwarder's job.
    while True:
        await asyncio.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            continue


def _handler(path: str):  # type: ignore[no-untyped-def]
    return lambda r, w: _serve_one(path, r, w)


async def _main(pairs: list[tuple[socket.socket, str]], pid: int) -> None:
    servers = [
        await asyncio.start_server(_handler(path), sock=listener, limit=CHUNK)
        for listener, path in pairs
    ]
    await _watch(pid)
    for server in servers:
        server.close()


def main(argv: list[str]) -> int:
    """Bind each ``127.0.0.1:PORT``, fork a server child, return once they listen."""
    if not argv or len(argv) % 2:
        print("usage: forwarder.py PORT SOCKET [PORT SOCKET ...]", file=sys.stderr)  # noqa: T201
        return 2
    pairs = []
    for port_text, path in zip(argv[::2], argv[1::2], strict=True):
        port = int(port_text)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError as exc:
            text = f"hal: gateway forwarder cannot listen on 127.0.0.1:{port}: {exc}"
            print(text, file=sys.stderr)  # noqa: T201
            return 1
        listener.listen(128)
        listener.setblocking(False)
        pairs.append((listener, path))
        if port == 0:
            print(listener.getsockname()[1], flush=True)  # noqa: T201
    watched = os.getppid()  # the launcher, which becomes the agent by exec
    if os.fork() != 0:
        return 0
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    asyncio.run(_main(pairs, watched))
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
