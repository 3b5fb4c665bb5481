"""Whether an address is the host's own, as the kernel routes it: the egress proxy's last check.

An allowed name may resolve to any address its DNS answers with (a wildcard over a service
that maps names to addresses, a rebinding name). Besides loopback and link-local (refused by
their kind in ``egress.py``), the host's own addresses on its interfaces (``eth0``'s
``192.0.2.2``, its IPv6 ones) and any prefix routed to the host itself (``ip route add local``)
reach a service of the host listening on every address. Which addresses those are is the
kernel's to say: :func:`is_local` asks it for the route a connection would take (``ip route
get``, over rtnetlink) and takes ``local``, ``broadcast``, ``anycast`` and ``multicast`` routes
as the host's own. An answer it cannot read counts as local: the check fails closed.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

RTM_NEWROUTE, RTM_GETROUTE, NLMSG_ERROR = 24, 26, 2
NLM_F_REQUEST = 1
RTA_DST = 1
_HOSTS_OWN = frozenset({2, 3, 4, 5})  # RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST, RTN_MULTICAST
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH})


def is_local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the kernel routes a connection to ``address`` to this host itself.

    An address with no route (``ENETUNREACH``) is not local: a connection to it fails. A
    v4-mapped IPv6 address is the caller's to unwrap (the kernel connects it over IPv4).
    """
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    packed = address.packed
    rtmsg = struct.pack("=BBBBBBBBI", family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0)
    attr = struct.pack("=HH", 4 + len(packed), RTA_DST) + packed
    body = rtmsg + attr
    seq = int.from_bytes(os.urandom(4), "little")
    request = struct.pack("=IHHII", 16 + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
            nl.settimeout(5)
            nl.sendto(request, (0, 0))
            while True:
                answer = nl.recv(65536)
                while len(answer) >= 16:
                    length, kind, _, got_seq, _ = struct.unpack_from("=IHHII", answer)
                    if got_seq == seq:
                        return _judge(kind, answer[16:length])
                    if length < 16:
                        return True
                    answer = answer[(length + 3) & ~3 :]
    except OSError:
        return True


def _judge(kind: int, payload: bytes) -> bool:
    if kind == NLMSG_ERROR and len(payload) >= 4:
        code = -struct.unpack_from("=i", payload)[0]
        return code not in _NO_ROUTE
    if kind == RTM_NEWROUTE and len(payload) >= 8:
        return payload[7] in _HOSTS_OWN
    return True
