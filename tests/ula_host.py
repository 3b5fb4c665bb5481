"""A host the egress proxy may tunnel to: a network namespace this test creates, joined to
the host's by a veth, on an IPv6 ULA /64 of its own (``fd42:<random>::/64``: never one of the
host's own addresses, which egress refuses, nor 10/8, 172.16/12, 192.168/16 or a public
address; link-local is refused by egress too). The host end is ``::1``, the namespace's
``::2``; listeners are opened in the namespace from this process (``setns`` on this thread
for the ``socket()`` call only), so a test serves the target with its own threads or loop.
The namespace and the veth go in the finalizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


def missing() -> str | None:
    """Why no namespace can be made here (not root, no ``ip``), or None."""
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    if shutil.which("ip") is None:
        return "no ip(8)"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass(frozen=True)
class UlaHost:
    netns: str
    address: str
    """The namespace's address (``fd42:...::2``)."""

    def target(self, port: int) -> str:
        """``[address]:port``, as a CONNECT target and an allow-list entry."""
        return f"[{self.address}]:{port}"

    async def echo_server(self) -> tuple[asyncio.Server, str]:
        """A server in the namespace answering ``echo:`` and the first line it reads, and
        its CONNECT target."""

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"echo:" + await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, sock=self.listen())
        return server, self.target(server.sockets[0].getsockname()[1])

    def listen(self, backlog: int = 128) -> socket.socket:
        """A TCP listener on the namespace's address, on a free port."""
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            _setns(there)
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            finally:
                _setns(here)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, 0))
            sock.listen(backlog)
            return sock
        finally:
            os.close(here)
            os.close(there)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def ula_host() -> Iterator[UlaHost]:
    """A namespace on a random ULA /64, joined to this host by a veth."""
    tag = secrets.token_hex(3)
    prefix = f"fd42:{tag[:4]}:{tag[4:]}{secrets.token_hex(1)}:{secrets.token_hex(2)}"
    netns, host_veth, ns_veth = f"halula-{tag}", f"hul{tag}", f"nul{tag}"
    try:
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host_veth, "type", "veth", "peer", "name", ns_veth)
        _run("ip", "link", "set", ns_veth, "netns", netns)
        _run("ip", "addr", "add", f"{prefix}::1/64", "dev", host_veth, "nodad")
        _run("ip", "link", "set", host_veth, "up")
        _run("ip", "-n", netns, "addr", "add", f"{prefix}::2/64", "dev", ns_veth, "nodad")
        _run("ip", "-n", netns, "link", "set", ns_veth, "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        yield UlaHost(netns, f"{prefix}::2")
    finally:
        subprocess.run(["ip", "link", "del", host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
