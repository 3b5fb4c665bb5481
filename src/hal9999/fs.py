"""Host files hal writes whole, and every rename it makes.

An atomic write creates a fresh temp file beside the target (``O_EXCL`` under a random
name, so two writers never share one, and never through a link planted there), writes it,
sets its mode, fsyncs it and renames it over the target; where durability matters the
directory is fsynced too, so the rename itself survives a crash. On any failure the temp
file is removed: a reader sees the old content or the new one, never a torn file, and a
crash leaves at most a hidden ``*.hal-tmp`` file.

:func:`replace` is hal's one rename (of a file, a link or a directory), which these writes
use and which can make a rename durable. Access to places an agent can write goes through
:mod:`hal9999.agentfs`, which uses these with its directory fds.

Only :mod:`posix` is imported (no ``os``, ``posixpath`` or ``contextlib``): the per-task
supervisor, a ``python -I -S``, writes its exit status with this module.
"""

from __future__ import annotations

import posix

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    import os
    from collections.abc import Iterable
    from types import TracebackType

    StrPath = str | os.PathLike[str]

TEMP_SUFFIX = ".hal-tmp"
"""How the name of a temp file on its way in ends (what sweeps of leftovers look for)."""

_CREATE = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
_DIR = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC


def temp_beside(path: StrPath) -> str:
    """A fresh hidden name in the directory of ``path`` for a file on its way to ``path``."""
    folder, slash, name = posix.fspath(path).rpartition("/")
    return f"{folder}{slash}.{name.lstrip('.')[:40]}.{posix.urandom(6).hex()}{TEMP_SUFFIX}"


def fsync_dir(path: StrPath, *, dir_fd: int | None = None) -> None:
    """Make a create, rename or removal inside the directory ``path`` durable."""
    fd = posix.open(path, _DIR, dir_fd=dir_fd)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


def _folder(path: str) -> str:
    return path.rpartition("/")[0] or ("/" if path.startswith("/") else ".")


def replace(
    src: StrPath,
    dst: StrPath,
    *,
    durable: bool = False,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """Rename ``src`` over ``dst`` (atomic within one filesystem; a link at either is the
    link itself). ``durable``: the rename is on disk when this returns (the directories
    fsynced). The names may be relative to directory fds, as :func:`os.replace` takes them."""
    posix.replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
    if durable:
        into = _folder(posix.fspath(dst))
        fsync_dir(into, dir_fd=dst_dir_fd)
        came = _folder(posix.fspath(src))
        if (came, src_dir_fd) != (into, dst_dir_fd):
            fsync_dir(came, dir_fd=src_dir_fd)


class AtomicFile:
    """A file on its way to ``path``: written through :attr:`fd` (or by another process
    through :attr:`tmp`), put in place when the ``with`` body ends without an error,
    removed when it raises.

    ``mode``: the file's exact mode (never the umask's); ``None`` makes it as ``open`` does
    (0o666 less the umask). ``durable``: the file and its rename are on disk once the
    ``with`` ends. ``dir_fd``: ``path`` is relative to that directory.
    """

    def __init__(
        self,
        path: StrPath,
        *,
        mode: int | None = 0o600,
        durable: bool = True,
        dir_fd: int | None = None,
    ) -> None:
        self.path = posix.fspath(path)
        self.tmp = temp_beside(self.path)
        """The temp file's name (relative to ``dir_fd`` when given)."""
        self.mode, self.durable, self.dir_fd = mode, durable, dir_fd
        self.fd = -1

    def __enter__(self) -> AtomicFile:
        created = 0o666 if self.mode is None else self.mode & 0o777
        self.fd = posix.open(self.tmp, _CREATE, created, dir_fd=self.dir_fd)
        return self

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append all of ``data`` (a regular file may take it in parts)."""
        view = memoryview(data)
        while view:
            view = view[posix.write(self.fd, view) :]

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            try:
                if kind is None:
                    if self.mode is not None:
                        posix.fchmod(self.fd, self.mode)
                    if self.durable:
                        posix.fsync(self.fd)
            finally:
                posix.close(self.fd)
            if kind is None:
                replace(
                    self.tmp, self.path, durable=self.durable,
                    src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd,
                )  # fmt: skip
                return
        except BaseException:
            self._discard()
            raise
        self._discard()

    def _discard(self) -> None:
        try:
            posix.unlink(self.tmp, dir_fd=self.dir_fd)
        except OSError:
            pass  # renamed in already, or never made


def atomic(
    path: StrPath,
    *,
    mode: int | None = 0o600,
    durable: bool = True,
    dir_fd: int | None = None,
) -> AtomicFile:
    """``with fs.atomic(path) as out:`` an :class:`AtomicFile`: ``out.write(...)``, and
    ``path`` is replaced when the body ends without an error."""
    return AtomicFile(path, mode=mode, durable=durable, dir_fd=dir_fd)


def write_bytes(
    path: StrPath,
    data: bytes | bytearray | memoryview,
    *,
    mode: int | None = 0o600,
    durable: bool = True,
    dir_fd: int | None = None,
) -> None:
    """Replace ``path`` atomically by a file holding ``data`` (see :class:`AtomicFile`)."""
    with atomic(path, mode=mode, durable=durable, dir_fd=dir_fd) as out:
        out.write(data)


def write_text(
    path: StrPath,
    text: str,
    *,
    mode: int | None = 0o600,
    durable: bool = True,
    dir_fd: int | None = None,
) -> None:
    """Replace ``path`` atomically by a file holding ``text`` in UTF-8."""
    write_bytes(path, text.encode(), mode=mode, durable=durable, dir_fd=dir_fd)


def write_json(
    path: StrPath,
    value: object,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    mode: int | None = 0o600,
    durable: bool = True,
) -> None:
    """Replace ``path`` atomically by ``value`` as ``json.dumps`` writes it."""
    import json

    text = json.dumps(value, indent=indent, sort_keys=sort_keys)
    write_bytes(path, text.encode(), mode=mode, durable=durable)


def write_chunks(
    path: StrPath,
    chunks: Iterable[bytes],
    *,
    mode: int | None = 0o600,
    durable: bool = True,
    dir_fd: int | None = None,
) -> int:
    """Replace ``path`` atomically by the concatenation of ``chunks``; its size."""
    total = 0
    with atomic(path, mode=mode, durable=durable, dir_fd=dir_fd) as out:
        for chunk in chunks:
            out.write(chunk)
            total += len(chunk)
    return total


def symlink(target: StrPath, link: StrPath, *, durable: bool = False) -> None:
    """Make ``link`` a symlink to ``target``, atomically replacing what was there."""
    tmp = temp_beside(link)
    posix.symlink(target, tmp)
    _put(tmp, link, durable)


def hardlink(source: StrPath, link: StrPath, *, durable: bool = False) -> None:
    """Make ``link`` another name of ``source`` (a symlink: the link itself, no new inode),
    atomically replacing what was there."""
    tmp = temp_beside(link)
    posix.link(source, tmp, follow_symlinks=False)
    _put(tmp, link, durable)


def _put(tmp: str, path: StrPath, durable: bool) -> None:
    try:
        replace(tmp, path, durable=durable)
    except BaseException:
        try:
            posix.unlink(tmp)
        except OSError:
            pass
        raise
