"""Unix sockets bound and connected at paths of any length.

``sun_path`` holds 107 bytes; a deep ``HAL_HOME``'s sockets (the gateway's
``gateway/channel/egress.sock``, a hive agent's ``mcp.sock``) can be longer. Bound or
connected through their directory's descriptor (``/proc/self/fd/N/name``), they are reached
where the path says whatever its length. Another process (ssh's master) is given a path
through a link in a private directory of a short path instead: :func:`linked`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hal9999.errors import HalError

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


def connect(sock: socket.socket, path: str | Path) -> None:
    """``sock.connect(path)`` for a path of any length: one past ``sun_path`` is connected
    through a descriptor of its directory (as :func:`bound` binds)."""
    if fits(path):
        sock.connect(os.fspath(path))
        return
    head, name = os.path.split(os.fspath(path))
    directory = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{name}")
    finally:
        os.close(directory)


def private_dir(path: Path, *, parents: bool = False) -> Path:
    """``path``, made (mode 700) or found as this user's own directory that no one else can
    enter: a home in a shared place such as /tmp, where anyone could have made it first (or
    planted a link there) and would then replace what hal puts in it. Every part of the path
    above it must be one no other user can swap: a directory of root's or ours that others
    cannot write (or sticky, as /tmp), a link only of root's or ours. ``parents``: missing
    parents are made the same way. PermissionError when it is not."""
    _check_parents(path)
    if parents and not os.path.lexists(path.parent):
        private_dir(path.parent, parents=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o077:
        raise PermissionError(f"{path} is not a directory of this user's alone (mode 700)")
    return path


def _check_parents(path: Path) -> None:
    """PermissionError unless no other user can replace a part of ``path``'s parent."""
    me = os.geteuid()
    for part in reversed(path.absolute().parents):
        try:
            info = os.lstat(part)
        except FileNotFoundError:
            return  # made by us below here
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in (0, me):
                raise PermissionError(f"{part} is a link of another user's")
            info = os.stat(part)
        shared = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, me) or shared:
            raise PermissionError(f"{part} can be replaced by another user")


def own_dir(
    path: Path,
    sockets: str,
    setting: str,
    error: type[HalError] | None = None,
    *,
    parents: bool = False,
) -> Path:
    """:func:`private_dir`, refused as hal's one-line error (``error``, a ``ProcessError``
    by default) naming whose ``sockets`` would live there and the ``setting`` that puts
    them elsewhere."""
    try:
        return private_dir(path, parents=parents)
    except PermissionError as refused:
        from hal9999.errors import ProcessError  # here: tmux's early start imports this

        raise (error or ProcessError)(
            f"{refused}: hal does not put {sockets} where others can replace them",
            hint=f"remove it (another user made it) or set {setting} to a directory of yours",
        ) from None


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


def linked(path: Path, directory: Path) -> str:
    """``path`` as another process can connect it: itself when it fits, else through a link
    to its directory made in ``directory`` (a private directory with a short path, such as
    a VM's run directory: nobody else can replace the link). Raises OSError when neither
    fits."""
    if fits(path):
        return str(path)
    import hashlib  # here: a run imports this module (to tell the gateway) but never links

    tag = hashlib.sha256(os.fsencode(path.parent)).hexdigest()[:12]
    link = directory / f"sock-{tag}"
    short = link / path.name
    if not fits(short):
        raise OSError(f"the socket path {path} is too long, and so is {short}")
    if not (link.is_symlink() and os.readlink(link) == str(path.parent)):
        from hal9999 import fs

        fs.symlink(path.parent, link)
    return str(short)
