"""Unix sockets bound and connected at paths of any length.

``sun_path`` holds 107 bytes; a deep ``HAL_HOME``'s sockets (the gateway's
``gateway/channel/egress.sock``, a hive agent's ``mcp.sock``) can be longer. Bound or
connected through their directory's descriptor (``/proc/self/fd/N/name``), they are reached
where the path says whatever its length. Another process (ssh's master) is given a path
relative to a directory it runs in instead: :func:`relative`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

SUN_PATH = 107
"""The longest path ``connect`` and ``bind`` take (``sun_path`` less its terminating NUL)."""


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


def fits(path: str | Path) -> bool:
    """Whether ``path`` can be given to ``connect`` or ``bind`` as it is."""
    return len(os.fsencode(path)) <= SUN_PATH


def held(path: str | Path) -> str:
    """A path naming the socket at ``path`` for the rest of this process: ``path`` itself
    when it fits, else its name under a descriptor of its directory, which stays open (for
    a process that lives as long as its use, such as the ssh relay)."""
    if fits(path):
        return str(path)
    where = Path(path)
    directory = os.open(where.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{directory}/{where.name}"

def relative(path: Path, cwd: Path) -> str:
    """``path`` as another process running in ``cwd`` can reach it: absolute when it fits
    (so a process started elsewhere reaches it too), else relative to ``cwd``. Raises
    OSError when neither fits."""
    if fits(path):
        return str(path)
    rel = os.path.relpath(path, cwd)
    shown = rel if rel.startswith("../") else f"./{rel}"  # a '/' marks a path to ssh
    if not fits(shown):
        raise OSError(f"the socket path {path} is too long to reach from {cwd}")
    return shown
