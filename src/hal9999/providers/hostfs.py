"""Sandbox paths that map onto host directories, and the file operations done host-side.

A :class:`PathMap` lists the host directories a sandbox sees (its workspace, home, binds),
each as a :class:`Mount`. A file operation on a mapped path runs directly on the host,
which is fast and needs no process inside. Symlinks are the catch: a command inside can
plant ``/workspace/x -> /etc/shadow``, which means one thing inside and another on the host.
So a path is mapped only when, resolved on the host, it stays within its mount; otherwise
the caller gets None and must do the operation inside the sandbox, where the link means
what the command meant.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hal9999.errors import ExecError


@dataclass(frozen=True)
class Mount:
    """A host directory seen at ``target`` inside the sandbox."""

    target: str
    source: Path
    writable: bool


@dataclass(frozen=True)
class HostPath:
    """Where a sandbox path lives on the host."""

    path: Path
    writable: bool
    is_mount_root: bool


def normalize(path: str, cwd: str) -> str:
    """An absolute, ``..``-free sandbox path; relative paths are taken from ``cwd``."""
    joined = posixpath.normpath(posixpath.join(cwd, path))
    # normpath keeps a leading "//" (POSIX allows it to mean something); we never do.
    return "/" + joined.lstrip("/")


def _within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


class PathMap:
    """Translates sandbox paths to host paths through a sandbox's mounts."""

    def __init__(self, mounts: Iterable[Mount], *, cwd: str) -> None:
        normal = [Mount(normalize(m.target, "/"), m.source, m.writable) for m in mounts]
        # Longest target first, so a bind inside the workspace wins over the workspace.
        self.mounts = sorted(normal, key=lambda m: len(m.target), reverse=True)
        self.cwd = cwd
        self._real = {m.source: os.path.realpath(m.source) for m in self.mounts}

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

    def host(self, path: str, *, follow: bool) -> HostPath | None:
        """The host path for ``path``, or None when unmapped or resolving outside its mount.

        ``follow`` says whether the operation follows a symlink in the last component
        (read, exists, mkdir) or acts on the link itself (write by rename, remove).
        """
        found = self.mount_for(path)
        if found is None:
            return None
        mount, relative = found
        host = mount.source / relative if relative else mount.source
        resolved = os.path.realpath(host if follow or not relative else host.parent)
        if not _within(resolved, self._real[mount.source]):
            return None
        return HostPath(host, mount.writable, not relative)


def _fail(action: str, path: str, exc: OSError) -> ExecError:
    return ExecError(f"cannot {action} {path}: {exc.strerror or exc}", path=path)


def _require_writable(where: HostPath, path: str) -> None:
    if not where.writable:
        raise ExecError(f"cannot write {path}: it is on a read-only mount", path=path)


def read_file(where: HostPath, path: str) -> bytes:
    """The bytes of the file at ``where`` (``path`` is the sandbox name, for errors)."""
    try:
        return where.path.read_bytes()
    except OSError as exc:
        raise _fail("read", path, exc) from exc


def write_file_atomic(where: HostPath, path: str, data: bytes, mode: int) -> None:
    """Write through a temp file in the same directory, fsync, rename, then read it back."""
    _require_writable(where, path)
    target = where.path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), mode)  # explicit: the umask must not decide
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)
        written = target.read_bytes()
    except OSError as exc:
        raise _fail("write", path, exc) from exc
    if written != data:
        raise ExecError(
            f"wrote {path} but read back {len(written)} bytes instead of {len(data)}", path=path
        )


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exists(where: HostPath) -> bool:
    """Whether the path exists (a dangling symlink does not)."""
    return where.path.exists()


def mkdir(where: HostPath, path: str, mode: int) -> None:
    """Create the directory and its parents; ``mode`` applies to the directory itself."""
    if where.path.is_dir():
        return
    _require_writable(where, path)
    try:
        where.path.mkdir(parents=True, mode=mode)
        os.chmod(where.path, mode)
    except FileExistsError as exc:
        raise ExecError(f"cannot create directory {path}: a file is in the way", path=path) from exc
    except OSError as exc:
        raise _fail("create directory", path, exc) from exc


def remove(where: HostPath, path: str, recursive: bool) -> None:
    """Remove a file or symlink, or a tree with ``recursive``; a missing path is fine."""
    if where.is_mount_root:
        raise ExecError(f"cannot remove {path}: it is a mount point of the sandbox", path=path)
    target = where.path
    if not os.path.lexists(target):
        return
    _require_writable(where, path)
    try:
        if target.is_dir() and not target.is_symlink():
            if not recursive:
                raise ExecError(f"cannot remove {path}: is a directory (pass recursive)", path=path)
            shutil.rmtree(target)
        else:
            target.unlink()
    except OSError as exc:
        raise _fail("remove", path, exc) from exc
