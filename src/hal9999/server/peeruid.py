"""The local user at the other end of a loopback TCP connection, as the kernel knows it.

A unix socket tells who connected (``SO_PEERCRED``); TCP does not, but on loopback the other
end is a socket of this host, in the kernel's table with its owner's uid. The kernel's socket
diagnostics (``NETLINK_SOCK_DIAG``, what ``ss -e`` reads) look that socket up by the
connection's four addresses and ports: one exact lookup, however many sockets the host has
(reading ``/proc/net/tcp`` would parse every one of them, a table a local user can grow).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_UID_AT = 4 + 48 + 12
"""Where ``idiag_uid`` is in an ``inet_diag_msg`` (after family/state/timer/retrans, the
socket id, and expires/rqueue/wqueue)."""
LOOKUP_S = 1.0
"""The longest a lookup may wait for the kernel's answer (it answers at once)."""


def _packed(host: str) -> tuple[int, bytes]:
    """The family to ask in and the 16-byte address field of ``host``."""
    address = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # a dual-stack socket's IPv4 peer
    address = mapped or address
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return family, address.packed.ljust(16, b"\0")


def tcp_owner(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket at ``peer`` that is connected to ``local`` (this end of
    the connection), or None when the kernel does not say (the peer has already gone, the
    host's kernel has no socket diagnostics)."""
    try:
        family, source = _packed(str(peer[0]))
        local_family, dest = _packed(str(local[0]))
    except ValueError:
        return None
    if family != local_family:
        return None
    # inet_diag_req_v2, whose socket id is the peer's view: its address, then ours.
    sockid = struct.pack(">HH", int(peer[1]), int(local[1])) + source + dest
    sockid += struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
    seq = int.from_bytes(os.urandom(4), "little")
    request = struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(LOOKUP_S)
            nl.sendto(request + body, (0, 0))
            while True:
                answer = nl.recv(65536)
                while len(answer) >= 16:
                    length, kind, _, got_seq, _ = struct.unpack_from("=IHHII", answer)
                    if length < 16:
                        return None
                    if got_seq == seq:
                        if kind != SOCK_DIAG_BY_FAMILY or length < 16 + _UID_AT + 4:
                            return None  # NLMSG_ERROR: no such socket (any more)
                        return int(struct.unpack_from("=I", answer, 16 + _UID_AT)[0])
                    answer = answer[(length + 3) & ~3 :]
    except OSError:
        return None
