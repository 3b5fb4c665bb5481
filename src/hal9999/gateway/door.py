"""The gateway's door: how many connections may be waiting for a request, from one sandbox and
in all, and how long one may take to send its request.

Anything in a sandbox can connect to the gateway (its socket is the sandbox's way out to the
LLM providers), with no token at all, and say nothing or send a byte a minute: each such
connection held a file descriptor and a task of the gateway for ever, and enough of them,
from one sandbox, left no room for the model calls of every task on the host. Now a
connection has :data:`REQUEST_S` to send each request (the idle time before it included:
agents' HTTP clients drop an idle connection after a few seconds themselves), and at most
:data:`PER_PEER` connections of one peer and :data:`IN_ALL` in all may be waiting at once;
one past either is answered 503 at once and closed. A request being answered is not waiting:
the gateway's upstream limits and budgets bound those.

An answer sent before the request was read whole (that 503, or a refusal of a head or body
part-way) ends in a lingering close (:func:`linger`): the gateway half-closes and reads what
the client still sends before it closes. Closed at once, the client's next write of its
request failed (EPIPE), and a relay in between (the in-sandbox forwarders) dropped the
connection with the answer it had already received: the agent saw a call closed with no
answer at all instead of a 503 it retries.

A peer is the sandbox the connecting process runs in: its pid namespace (from the socket's
``SO_PEERPIDFD``, a pidfd of the very process that connected, so a pid reused since cannot
point at another sandbox), or the one just below the gateway's when that process made
namespaces of its own: a sandbox is one peer however many it nests. A peer in the gateway's
own pid namespace (a host process, or a provider whose processes reach the socket from the
host) is its uid, as are all peers on a kernel older than 6.11 (no pid namespace from a
pidfd). Keyed by uid alone, every
sandbox of a hal running as an ordinary user shared one uid: one agent filled the 64 places
of them all. The grant's token cannot key them: a waiting connection has sent no request.
A connection whose connecting process has exited (a sandbox process that connects, forks a
child to hold the socket and exits) has no namespace to read: it is ``("exited", uid)``, never
its uid's peer, which every forwarded sandbox (qemu, docker, ssh) and host process shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
from typing import Any

LINGER_S = 5.0
"""How long a lingering close reads what the client still sends (it ends at its EOF)."""
LINGER_BYTES = 1 << 20
"""How much a lingering close reads at most: past it the connection closes at once."""
REQUEST_S = 60.0
"""The longest a connection may take to send one request (waiting for it included)."""
PER_PEER = 64
"""Connections of one peer (sandbox) that may be waiting for their request at once."""
IN_ALL = 1024
"""Connections that may be waiting for their request at once, all peers together."""


SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
"""A pidfd of the process that connected (Linux 6.5; Python names it from 3.13 on)."""
PIDFD_GET_PID_NAMESPACE = 0xFF05
"""``_IO(PIDFS_IOCTL_MAGIC, 5)``: the pid namespace of a pidfd's process (Linux 6.11)."""
NS_GET_PARENT = 0xB702
"""``_IO(NSIO, 2)``: the parent of a pid namespace."""

Peer = tuple[str, int] | None
"""``("pidns", inode)`` of a sandbox, ``("exited", uid)`` when the connecting process is
gone, ``("uid", uid)`` otherwise, None when unknown."""

EXITED = -1
""":func:`_pid_namespace`'s answer when the connecting process has exited."""


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """Who is at the other end of a unix socket (see the module's docstring)."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    namespace = _pid_namespace(sock)
    if namespace == EXITED:  # its socket held by another process: whose, nobody can say
        return ("exited", int(uid))
    if namespace is not None and namespace != _own_pid_namespace():
        return ("pidns", namespace)
    return ("uid", int(uid))


def _pid_namespace(sock: Any) -> int | None:
    """The inode of the connecting process's pid namespace; :data:`EXITED` when that process
    has exited (ESRCH: from the pidfd's ioctl, or, before Linux 6.16, from SO_PEERPIDFD
    itself), None when the kernel cannot say."""
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        return EXITED if exc.errno == errno.ESRCH else None
    try:
        nsfd = fcntl.ioctl(pidfd, PIDFD_GET_PID_NAMESPACE)
    except OSError as exc:
        return EXITED if exc.errno == errno.ESRCH else None
    finally:
        os.close(pidfd)
    # The namespace just below the gateway's: a process that made a namespace of its own
    # inside its sandbox (a root hal's sandbox may make user namespaces) is still that
    # sandbox, not a new peer with 64 more places.
    own = _own_pid_namespace()
    try:
        for _ in range(33):  # pid namespaces nest 32 deep at most
            try:
                parent = fcntl.ioctl(nsfd, NS_GET_PARENT)
            except OSError:  # the top, or a parent outside the gateway's view
                break
            if os.fstat(parent).st_ino == own:
                os.close(parent)
                break
            os.close(nsfd)
            nsfd = parent
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


_own: list[int] = []


def _own_pid_namespace() -> int | None:
    """The gateway's own pid namespace (read once)."""
    if not _own:
        with contextlib.suppress(OSError):
            _own.append(os.stat("/proc/self/ns/pid").st_ino)
    return _own[0] if _own else None


class Door:
    """Counts the connections waiting for a request, per peer and in all, and those in a
    lingering close."""

    def __init__(self, *, per_peer: int = PER_PEER, in_all: int = IN_ALL) -> None:
        self.per_peer = per_peer
        self.in_all = in_all
        self.waiting: dict[Peer, int] = {}
        self.total = 0
        self.lingering = 0
        """Connections in :meth:`linger`: at most :attr:`in_all`, past it they close at
        once (refused connections must not hold descriptors without bound)."""

    async def linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After an answer sent before its request was read whole: half-close, then read
        what the client still sends (up to its EOF, :data:`LINGER_BYTES` or
        :data:`LINGER_S`), so that its write of the request does not fail and take the
        answer with it. The caller closes the connection."""
        if self.lingering >= self.in_all:
            return
        self.lingering += 1
        try:
            if writer.can_write_eof():
                writer.write_eof()
            left = LINGER_BYTES
            async with asyncio.timeout(LINGER_S):
                while left > 0 and (data := await reader.read(min(left, 1 << 16))):
                    left -= len(data)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.lingering -= 1

    def enter(self, peer: Peer) -> bool:
        """Count one more connection of ``peer`` as waiting; False (nothing counted) when
        that would be past a bound."""
        if self.total >= self.in_all or self.waiting.get(peer, 0) >= self.per_peer:
            return False
        self.waiting[peer] = self.waiting.get(peer, 0) + 1
        self.total += 1
        return True

    def leave(self, peer: Peer) -> None:
        """A connection of ``peer`` counted by :meth:`enter` is no longer waiting."""
        left = self.waiting.get(peer, 0) - 1
        if left > 0:
            self.waiting[peer] = left
        else:
            self.waiting.pop(peer, None)
        self.total -= 1
