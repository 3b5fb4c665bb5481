"""Sandbox paths that map onto host directories, and the file operations done host-side.

A :class:`PathMap` lists the host directories a sandbox sees (its workspace, home, binds),
each as a :class:`Mount`. A file operation on a mapped path runs directly on the host,
which is fast and needs no process inside. Symlinks are the catch: a command inside can
plant ``/workspace/x -> /etc/shadow``, which means one thing inside and another on the host.
So a path with a symlink anywhere below its mount is not mapped (the caller gets None and
does the operation inside the sandbox, where the link means what the command meant), and a
mapped path is used only through :mod:`hal9999.agentfs`: relative to the mount's directory
fd, ``O_NOFOLLOW`` at every step, regular files only. A link swapped in between the check
here and the use there makes the operation fail; it is never followed.
"""

import os
import posixpath
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from hal9999.agentfs import AgentDir
from hal9999.errors import ExecError

READ_LIMIT = 256 << 20
"""Largest file read host-side into memory (bytes); configuration files, not results."""


class Mount(NamedTuple):
    """A host directory seen at ``target`` inside the sandbox."""

    target: str
    source: Path
    writable: bool


class HostPath(NamedTuple):
    """Where a sandbox path lives on the host."""

    path: Path
    writable: bool
    is_mount_root: bool
    root: Path | None = None
    """The mount's directory on the host (resolved once, from host configuration)."""
    relative: str = ""
    """The path below ``root``; every access walks it without following links."""
    label: str = ""
    """The mount's path inside the sandbox, for messages."""

    def open_root(self) -> AgentDir:
        """The mount's directory, opened without following a link."""
        return AgentDir.open(self.root or self.path, label=self.label or str(self.path))


def normalize(path: str, cwd: str) -> str:
    """An absolute, ``..``-free sandbox path; relative paths are taken from ``cwd``."""
    joined = posixpath.normpath(posixpath.join(cwd, path))
    # normpath keeps a leading "//" (POSIX allows it to mean something); we never do.
    return "/" + joined.lstrip("/")


def _within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def _has_link(root: str, relative: str, *, last: bool) -> bool:
    """Whether a component of ``relative`` below ``root`` is a symlink (the last one only
    when ``last``). A check, not a guarantee: the use goes through agentfs, by fd."""
    parts = [p for p in relative.split("/") if p]
    current = root
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except OSError:
            return False  # missing from here on: nothing to follow
        if stat.S_ISLNK(mode) and (last or index < len(parts) - 1):
            return True
    return False


class PathMap:
    """Translates sandbox paths to host paths through a sandbox's mounts."""

    def __init__(self, mounts: Iterable[Mount], *, cwd: str) -> None:
        normal = [Mount(normalize(m.target, "/"), m.source, m.writable) for m in mounts]
        # Longest target first, so a bind inside the workspace wins over the workspace.
        self.mounts = sorted(normal, key=lambda m: len(m.target), reverse=True)
        self.cwd = cwd
        # Mount sources come from host configuration, so their own links are resolved once,
        # when first used (a handle is made on every claim, most never touch a file).
        self._real: dict[Path, str] = {}

    def normalize(self, path: str) -> str:
        """``path`` made absolute and normal."""
        return normalize(path, self.cwd)

    def mount_for(self, path: str) -> tuple[Mount, str] | None:
        """The mount holding ``path`` and the path relative to it."""
        path = self.normalize(path)
        for mount in self.mounts:
            if _within(path, mount.target):
                return mount, path[len(mount.target) :].lstrip("/")
        return None

    def writable_roots(self, targets: Sequence[str]) -> list[Path]:
        """The host sources of the writable mounts whose targets are among ``targets``."""
        found = [self.mount_for(target) for target in targets]
        return [f[0].source for f in found if f is not None and not f[1] and f[0].writable]

    def host(self, path: str, *, follow: bool) -> HostPath | None:
        """The host path for ``path``, or None when unmapped or a symlink is on the way.

        ``follow`` says whether the operation follows a symlink in the last component
        (read, exists, mkdir) or acts on the link itself (write by rename, remove).
        """
        found = self.mount_for(path)
        if found is None:
            return None
        mount, relative = found
        real = self._real.get(mount.source)
        if real is None:
            real = self._real[mount.source] = os.path.realpath(mount.source)
        if _has_link(real, relative, last=follow):
            return None
        host = mount.source / relative if relative else mount.source
        return HostPath(host, mount.writable, not relative, Path(real), relative, mount.target)


def _require_writable(where: HostPath, path: str) -> None:
    if not where.writable:
        raise ExecError(f"cannot write {path}: it is on a read-only mount", path=path)


def read_file(where: HostPath, path: str) -> bytes:
    """The bytes of the regular file at ``where`` (``path`` is the sandbox name, for errors)."""
    if where.is_mount_root:
        raise ExecError(f"cannot read {path}: it is a directory", path=path)
    with where.open_root() as root:
        return root.read_bytes(where.relative, limit=READ_LIMIT)


def write_file_atomic(where: HostPath, path: str, data: bytes, mode: int) -> None:
    """Write through a fresh temp file in the same directory, fsync, rename, read it back.

    A link, hard link or FIFO planted at the target is replaced, never written through."""
    _require_writable(where, path)
    if where.is_mount_root:
        raise ExecError(f"cannot write {path}: it is a mount point of the sandbox", path=path)
    with where.open_root() as root:
        root.write_atomic(where.relative, data, mode=mode, parents=True)
        written = root.read_bytes(where.relative, limit=len(data) + 1)
    if written != data:
        raise ExecError(
            f"wrote {path} but read back {len(written)} bytes instead of {len(data)}", path=path
        )


def exists(where: HostPath) -> bool:
    """Whether the path exists (a dangling symlink does not)."""
    if where.is_mount_root:
        return where.path.is_dir()
    with where.open_root() as root:
        kind = root.kind(where.relative)
    return kind is not None and kind != "symlink"


def mkdir(where: HostPath, path: str, mode: int) -> None:
    """Create the directory and its parents; ``mode`` applies to the directory itself."""
    if where.is_mount_root:
        return
    with where.open_root() as root:
        kind = root.kind(where.relative)
        if kind == "dir":
            return
        _require_writable(where, path)
        if kind is not None:
            raise ExecError(f"cannot create directory {path}: a file is in the way", path=path)
        with root.subdir(where.relative, create=True, mode=mode) as created:
            os.fchmod(created.fd, mode)  # explicit: the umask must not decide


def remove(where: HostPath, path: str, recursive: bool) -> None:
    """Remove a file or symlink, or a tree with ``recursive``; a missing path is fine."""
    if where.is_mount_root:
        raise ExecError(f"cannot remove {path}: it is a mount point of the sandbox", path=path)
    with where.open_root() as root:
        kind = root.kind(where.relative)
        if kind is None:
            return
        _require_writable(where, path)
        if kind == "dir" and not recursive:
            raise ExecError(f"cannot remove {path}: is a directory (pass recursive)", path=path)
        root.remove(where.relative, recursive=recursive)
