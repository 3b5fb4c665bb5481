"""A unix socket bound at a path of any length.

``sun_path`` holds 107 bytes; a deep ``HAL_HOME``'s sockets (the gateway's
``gateway/channel/egress.sock``, a hive agent's ``mcp.sock``) can be longer. Bound through
their directory's descriptor (``/proc/self/fd/N/name``), they are made where the path says
whatever its length.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def bound(path: Path) -> socket.socket:
    """A unix stream socket bound at ``path`` (not yet listening), through the descriptor of
    ``path``'s directory."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sock.bind(f"/proc/self/fd/{directory}/{path.name}")
        finally:
            os.close(directory)
    except BaseException:
        sock.close()
        raise
    return sock
