"""Every host-side access to a place an agent can write (workspace, agent home, scratch tmp).

The rule: the host never follows a path the agent can influence. An agent can plant a
symlink, a dangling symlink, a directory, a FIFO or a hard link to a host file under any
name the host is about to use, and can swap one for another between the host's check and
its use. So each access here starts from a directory fd the host opened from a path it
trusts (:meth:`AgentDir.open`), walks down one component at a time with ``O_NOFOLLOW``,
checks what it opened with ``fstat`` (a regular file with one link, of bounded size) and
then reads, copies or writes *by fd*. Nothing is resolved by path twice, so nothing can be
swapped in between.

Writes into an agent place are :mod:`hal9999.fs`'s atomic writes through the directory fd: a
fresh file (``O_EXCL``) under a random name renamed over the target, so an existing link or
hard link at the target is replaced, never written through. Removal uses ``unlinkat``
through directory fds, which never leave the tree, with a bounded number of them open at
any depth.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

from hal9999 import fs
from hal9999.errors import UnsafePath

Kind = Literal["file", "dir", "symlink", "other"]
CHUNK = 1 << 20
"""Bytes per read when copying or scanning."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO the agent planted must not hang the host; O_NOCTTY: a tty
# must never become ours.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _parts(relative: str) -> list[str]:
    """The components of a relative path; absolute paths and ``..`` are refused."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if relative.startswith("/") or ".." in parts or not parts:
        raise UnsafePath(f"not a plain relative path: {relative!r}", path=relative)
    return parts


_MODES: tuple[tuple[Callable[[int], bool], Kind, str], ...] = (
    (stat.S_ISREG, "file", "a regular file"),
    (stat.S_ISDIR, "dir", "a directory"),
    (stat.S_ISLNK, "symlink", "a symlink"),
    (stat.S_ISFIFO, "other", "a FIFO"),
    (stat.S_ISSOCK, "other", "a socket"),
    (stat.S_ISCHR, "other", "a device"),
    (stat.S_ISBLK, "other", "a device"),
)
"""Each kind of inode: its :data:`Kind` and what a refusal calls it."""


def _open_dir(fd: int, name: str, create: bool, mode: int, shown: str) -> int:
    """An fd of the directory ``name`` in ``fd`` (made first with ``create``), opened
    without following a link; ``shown`` names it in the error."""
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=fd)
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise _error("open", shown, exc) from exc


def _kind_of(mode: int) -> tuple[Kind, str]:
    for test, kind, described in _MODES:
        if test(mode):
            return kind, described
    return "other", "not a regular file"


class AgentDir:
    """An open host directory whose contents the agent controls; all access is by fd."""

    def __init__(self, fd: int, label: str) -> None:
        self.fd = fd
        self.label = label
        """How errors name this directory (a host path or a sandbox path)."""

    @classmethod
    def open(cls, path: Path, *, label: str | None = None) -> AgentDir:
        """Open ``path``, whose parents the host trusts; a link as its last part is refused."""
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as exc:
            raise _error("open", str(path), exc) from exc
        return cls(fd, label or str(path))

    def close(self) -> None:
        """Close the directory fd (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> AgentDir:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def name(self, relative: str) -> str:
        """``relative`` as errors show it."""
        return f"{self.label.rstrip('/')}/{relative}"

    # -- walking -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _parent(
        self, relative: str, *, create: bool = False, mode: int = 0o700
    ) -> Iterator[tuple[int, str]]:
        """The fd of ``relative``'s directory (opened without following links) and its name."""
        parts = _parts(relative)
        fd = os.dup(self.fd)
        try:
            for part in parts[:-1]:
                child = _open_dir(fd, part, create, mode, self.name(relative))
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def subdir(self, relative: str, *, create: bool = False, mode: int = 0o700) -> AgentDir:
        """Open a directory below this one (created with ``create``); links are refused."""
        with self._parent(relative, create=create, mode=mode) as (fd, name):
            child = _open_dir(fd, name, create, mode, self.name(relative))
        return AgentDir(child, self.name(relative))

    def kind(self, relative: str) -> Kind | None:
        """What is at ``relative`` without following it, or None when nothing is."""
        try:
            with self._parent(relative) as (fd, name):
                return _kind_of(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)[0]
        except UnsafePath as exc:
            if exc.details.get("errno") in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        except FileNotFoundError:
            return None

    # -- reading -----------------------------------------------------------------------
    def open_fd(self, relative: str, *, limit: int) -> int:
        """An fd of the regular file at ``relative`` (one link, at most ``limit`` bytes).

        The caller owns the fd. Symlinks, directories, FIFOs, devices, sockets and hard
        links (which could be a host file the agent linked in) raise :class:`UnsafePath`.
        """
        shown = self.name(relative)
        with self._parent(relative) as (dfd, name):
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
            except OSError as exc:
                raise _error("read", shown, exc) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePath(f"refusing to read {shown}: it is {_kind_of(info.st_mode)[1]}")
            if info.st_nlink != 1:
                raise UnsafePath(
                    f"refusing to read {shown}: it has {info.st_nlink} hard links "
                    "(it may be a host file linked in)",
                    path=shown,
                )
            if info.st_size > limit:
                raise UnsafePath(
                    f"refusing to read {shown}: {info.st_size} bytes is over the limit of {limit}",
                    path=shown,
                )
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def reader(self, relative: str, *, limit: int) -> Iterator[BinaryIO]:
        """A binary reader of the checked regular file at ``relative``."""
        fd = self.open_fd(relative, limit=limit)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            yield handle

    def read_bytes(self, relative: str, *, limit: int) -> bytes:
        """The content of the regular file at ``relative``, at most ``limit`` bytes."""
        with self.reader(relative, limit=limit) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:  # it grew after the check
            raise UnsafePath(f"refusing to read {self.name(relative)}: it grew past {limit} bytes")
        return data

    def copy_out(self, relative: str, dest: Path, *, limit: int, mode: int = 0o600) -> int:
        """Copy the regular file at ``relative`` to ``dest``, a path in a directory the agent
        cannot reach; fsynced, replaced atomically. Returns the byte count."""
        with self.reader(relative, limit=limit) as handle:
            return write_host_file(dest, _chunks(handle, limit, self.name(relative)), mode=mode)

    # -- writing -----------------------------------------------------------------------
    def write_atomic(
        self, relative: str, data: bytes, *, mode: int = 0o600, parents: bool = False
    ) -> None:
        """Create ``relative`` with ``data`` (fsynced, then renamed over whatever was there:
        a planted link or hard link is replaced, never written through)."""
        shown = self.name(relative)
        with self._parent(relative, create=parents) as (dfd, name):
            try:
                fs.write_bytes(name, data, mode=mode, dir_fd=dfd)
            except OSError as exc:
                raise _error("write", shown, exc) from exc

    def mkdir(self, relative: str, *, mode: int = 0o700) -> None:
        """Create the directory ``relative`` and its parents; links on the way are refused."""
        self.subdir(relative, create=True, mode=mode).close()

    def rename(self, relative: str, target: str) -> None:
        """Rename ``relative`` to ``target`` (both below this directory), never following."""
        with self._parent(relative) as (sfd, sname), self._parent(target) as (tfd, tname):
            try:
                fs.replace(sname, tname, src_dir_fd=sfd, dst_dir_fd=tfd)
            except OSError as exc:
                raise _error("rename", self.name(relative), exc) from exc

    def remove(self, relative: str, *, recursive: bool = False) -> bool:
        """Remove what is at ``relative`` (a link as the link itself; a directory only with
        ``recursive``, fd-based so no link inside is followed). False when nothing was there."""
        shown = self.name(relative)
        try:
            with self._parent(relative) as (dfd, name):
                try:
                    info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if not stat.S_ISDIR(info.st_mode):
                        os.unlink(name, dir_fd=dfd)
                    elif recursive:
                        _remove_entry(dfd, name)
                    else:
                        os.rmdir(name, dir_fd=dfd)
                except FileNotFoundError:
                    return False
                except OSError as exc:
                    raise _error("remove", shown, exc) from exc
        except UnsafePath as exc:
            if exc.details.get("errno") == errno.ENOENT:
                return False
            raise
        return True


def _chunks(handle: BinaryIO, limit: int, shown: str) -> Iterator[bytes]:
    total = 0
    while chunk := handle.read(CHUNK):
        total += len(chunk)
        if total > limit:  # it grew after the check
            raise UnsafePath(f"refusing to copy {shown}: it grew past {limit} bytes", path=shown)
        yield chunk


def remove_tree(path: Path) -> bool:
    """Delete a host tree that holds agent-made files (a session, a scratch dir).

    Never follows a link (every step is relative to an open directory fd) and opens up
    directories the agent closed (mode 000 or 555) when hal owns them, which a plain
    ``rmtree`` run by an ordinary user skips silently. False when ``path`` was not there.
    """
    try:
        parent = AgentDir.open(path.parent)
    except UnsafePath as exc:
        if exc.details.get("errno") == errno.ENOENT:
            return False
        raise
    with parent:
        try:
            _remove_entry(parent.fd, path.name)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _error("remove", str(path), exc) from exc
    return True


REMOVE_DEPTH = 64
"""How deep a removal walks before it moves the rest of a tree up: an agent's tree may be
of any depth, and the walk holds one descriptor (and one frame) per level it is in."""


def _remove_entry(dfd: int, name: str) -> None:
    """Remove ``name`` below ``dfd`` and, for a directory, all it holds, at any depth with at
    most :data:`REMOVE_DEPTH` descriptors open: a directory deeper than that is moved up
    into the top of the tree (within it, so nothing leaves the tree), taken apart by the
    next pass. One descriptor a level let an agent's 1,100-level tree fail `hal task rm`
    at the default limit of 1,024 open files, and took a daemon's every descriptor while
    it ran."""
    if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
        os.unlink(name, dir_fd=dfd)
        return
    top = _enter(dfd, name)
    try:
        while _empty(top, top, 0):
            pass
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=dfd)


def _empty(fd: int, top: int, depth: int) -> bool:
    """Remove what the directory at ``fd`` holds, down to :data:`REMOVE_DEPTH`; whether
    anything was moved up into ``top`` (and is left there for another pass)."""
    moved = False
    for child in os.listdir(fd):
        if not stat.S_ISDIR(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode):
            os.unlink(child, dir_fd=fd)
        elif depth >= REMOVE_DEPTH:
            _open_up(fd, child)  # a directory moved to another parent must be writable
            up = f".hal-deep-{secrets.token_hex(8)}"
            fs.replace(child, up, src_dir_fd=fd, dst_dir_fd=top)
            moved = True
        else:
            sub = _enter(fd, child)
            try:
                moved = _empty(sub, top, depth + 1) or moved
            finally:
                os.close(sub)
            os.rmdir(child, dir_fd=fd)
    return moved


def _enter(dfd: int, name: str) -> int:
    _open_up(dfd, name)
    return os.open(name, _DIR_FLAGS, dir_fd=dfd)


def _open_up(dfd: int, name: str) -> None:
    """Give a directory hal owns back its owner's rwx, on the inode itself (an ``O_PATH``
    fd, changed through ``/proc/self/fd``: a link swapped in is never followed)."""
    if os.geteuid() == 0:
        return  # root reads and writes whatever the mode says
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and mode & 0o700 != 0o700:
            os.chmod(f"/proc/self/fd/{fd}", mode | 0o700)
    finally:
        os.close(fd)


def write_host_file(dest: Path, chunks: Iterator[bytes], *, mode: int = 0o600) -> int:
    """Write ``chunks`` to ``dest`` (in a directory only the host writes) through a fresh
    temp file, fsync it, rename it over ``dest`` and fsync the directory. Returns the size."""
    with AgentDir.open(dest.parent) as parent:
        return fs.write_chunks(dest.name, chunks, mode=mode, dir_fd=parent.fd)


def _error(action: str, shown: str, exc: OSError) -> UnsafePath:
    code = exc.errno
    if code == errno.ELOOP:
        reason = "it is a symlink (hal never follows links the agent can plant)"
    elif code == errno.ENOTDIR:
        reason = "a part of the path is not a directory (or is a symlink)"
    elif code == errno.EISDIR:
        reason = "it is a directory"
    else:
        reason = exc.strerror or str(exc)
    return UnsafePath(f"cannot {action} {shown}: {reason}", path=shown, errno=code)
