"""The in-sandbox MCP forwarder: the agent CLI's stdio to the agent's own hal socket.

An agent CLI starts it as its MCP server command, ``python3 -I -S forwarder.py SOCKET``; it
connects to SOCKET (the daemon's per-agent MCP socket, bound into this agent's sandbox
only; or ``tcp:127.0.0.1:PORT``, a port the provider carries to that socket, in a microVM)
and copies bytes both ways until either side closes. The daemon knows the caller by
the socket the bytes arrive on, so nothing here carries an identity.

Dependency-free on purpose (the standard library of the sandbox's ``python3``): the file is
copied as it is next to the socket, read-only inside the sandbox.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

CHUNK = 1 << 16
CONNECT_WAIT_S = 10.0
"""How long a missing or refusing socket is retried before giving up."""
MAX_SUN_PATH = 100
"""Longer socket paths are reached through their directory's ``/proc/self/fd`` entry."""


def _connect(path: str) -> socket.socket:
    if path.startswith("tcp:"):  # a port the provider carries to the host socket (a VM)
        host, _, port = path[4:].rpartition(":")
        return socket.create_connection((host, int(port)), timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if len(path.encode()) <= MAX_SUN_PATH:
        sock.connect(path)
        return sock
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)
    return sock


def _stdin_to_socket(sock: socket.socket) -> None:
    try:
        while data := os.read(0, CHUNK):
            sock.sendall(data)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)  # the CLI closed our stdin: the server sees EOF
    except OSError:
        pass


def _connect_soon(path: str) -> socket.socket:
    # The daemon opens a new agent's socket within seconds, and again after a restart.
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            return _connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    """Forward stdin/stdout to the unix socket ``argv[0]``; returns the exit status."""
    if len(argv) != 1:
        print("usage: forwarder.py SOCKET", file=sys.stderr)  # noqa: T201
        return 2
    try:
        sock = _connect_soon(argv[0])
    except OSError as exc:
        print(f"hal: cannot reach hal's MCP socket {argv[0]}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    sock.settimeout(None)
    threading.Thread(target=_stdin_to_socket, args=(sock,), daemon=True).start()
    try:
        while data := sock.recv(CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
