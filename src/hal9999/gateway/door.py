"""The gateway's door: how many connections may be waiting for a request, from one sandbox and
in all, and how long one may take to send its request.

Anything in a sandbox can connect to the gateway (its socket is the sandbox's way out to the
LLM providers), with no token at all, and say nothing or send a byte a minute: each such
connection held a file descriptor and a task of the gateway for ever, and enough of them,
from one sandbox, left no room for the model calls of every task on the host. Now a
connection has :data:`REQUEST_S` to send each request (the idle time before it included:
agents' HTTP clients drop an idle connection after a few seconds themselves), and at most
:data:`PER_PEER` connections of one peer (a sandbox's own uid under bwrap, read from the
socket's ``SO_PEERCRED``) and :data:`IN_ALL` in all may be waiting at once; one past either
is answered 503 at once and closed. A request being answered is not waiting: the gateway's
upstream limits and budgets bound those.
"""

from __future__ import annotations

import asyncio
import socket
import struct

REQUEST_S = 60.0
"""The longest a connection may take to send one request (waiting for it included)."""
PER_PEER = 64
"""Connections of one peer (uid) that may be waiting for their request at once."""
IN_ALL = 1024
"""Connections that may be waiting for their request at once, all peers together."""


def peer_of(writer: asyncio.StreamWriter) -> int | None:
    """The uid of the process at the other end of a unix socket, or None when unknown."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Door:
    """Counts the connections waiting for a request, per peer and in all."""

    def __init__(self, *, per_peer: int = PER_PEER, in_all: int = IN_ALL) -> None:
        self.per_peer = per_peer
        self.in_all = in_all
        self.waiting: dict[int | None, int] = {}
        self.total = 0

    def enter(self, peer: int | None) -> bool:
        """Count one more connection of ``peer`` as waiting; False (nothing counted) when
        that would be past a bound."""
        if self.total >= self.in_all or self.waiting.get(peer, 0) >= self.per_peer:
            return False
        self.waiting[peer] = self.waiting.get(peer, 0) + 1
        self.total += 1
        return True

    def leave(self, peer: int | None) -> None:
        """A connection of ``peer`` counted by :meth:`enter` is no longer waiting."""
        left = self.waiting.get(peer, 0) - 1
        if left > 0:
            self.waiting[peer] = left
        else:
            self.waiting.pop(peer, None)
        self.total -= 1
