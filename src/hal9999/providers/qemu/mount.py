"""Host bind mounts that let a running QEMU sandbox change which directories it shares.

QEMU's 9p server opens an exported directory once, at start, so a warm VM cannot be
pointed at a new task's workspace by re-pointing a symlink. Instead a pooled sandbox
exports a directory of its own, ``mnt/<i>``, and the host bind-mounts the task's directory
on ``mnt/<i>/d``: every 9p request walks from the export down through ``d`` and so crosses
whatever is mounted there now. Handing the VM to the next task is an unmount and a mount.

Bind mounts need root (CAP_SYS_ADMIN). Every path that deletes a sandbox directory first
unmounts everything under it and refuses to delete while anything stays mounted, so a
task's workspace can never be removed through a sandbox.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from hal9999.errors import ProviderError

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def can_mount() -> bool:
    """Whether this process may make bind mounts (root in the host's namespace)."""
    return os.geteuid() == 0


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise ProviderError(f"{what} failed: {os.strerror(errno)}")


def bind(source: Path, target: Path, *, read_only: bool) -> None:
    """Bind-mount ``source`` on ``target`` (read-only when asked)."""
    src, dst = os.fsencode(source), os.fsencode(target)
    _check(_libc.mount(src, dst, None, MS_BIND, None), f"bind mount {source} on {target}")
    if read_only:
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        try:
            _check(_libc.mount(None, dst, None, flags, None), f"read-only remount of {target}")
        except ProviderError:
            unmount(target)
            raise


def unmount(target: Path) -> None:
    """Detach whatever is mounted on ``target`` (no error when nothing is)."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        errno = ctypes.get_errno()
        if errno not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise ProviderError(f"unmount {target} failed: {os.strerror(errno)}")


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first."""
    prefix = os.fsencode(root)
    found = []
    with open("/proc/self/mountinfo", "rb") as info:
        for line in info:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + b"/"):
                found.append(Path(os.fsdecode(point)))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_all(root: Path) -> None:
    """Unmount everything at or below ``root``; ProviderError if anything stays."""
    for _ in range(3):
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            unmount(point)
    left = mounts_under(root)
    if left:
        raise ProviderError(
            f"cannot unmount {', '.join(map(str, left))}; refusing to delete {root}",
            hint="unmount them by hand (umount -l PATH) and destroy the sandbox again",
        )


def _unescape(field: bytes) -> bytes:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
