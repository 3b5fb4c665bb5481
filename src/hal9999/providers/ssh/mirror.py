"""Moving a session directory between the hal host and its mirror on the remote host.

The session lives on the hal host; a remote sandbox works on a mirror of it. A *push* sends
a host directory as a tar stream and the remote side unpacks it into a fresh directory that
then replaces the mirror (so files deleted on the host are gone there too). A *pull* brings a
writable mirror directory back the same way: the host unpacks the remote tar into a fresh
sibling with a filter of hal's own (:class:`_Keep`: the rules of :mod:`tarfile`'s ``data``
filter, no absolute or escaping names or links, no devices, no owners, judged on names, not
by ``realpath``, which a chain of links fools on Pythons before 3.11.13), then swaps it in
by rename. The host never follows a path the agent made: the tree it writes is new, and
the only paths it resolves are its own (the session dir, a pool slot link). The agent
decides the stream, not only the tree: on a host without bwrap it is the ssh user, whose
``~/.ssh/rc`` writes ahead of every command's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import re
import secrets
import stat
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from hal9999 import agentfs, fs
from hal9999.errors import ExecError, UnsafePath
from hal9999.providers.base import StreamEvent

PUSH = (
    'set -e; d=$1; shift; rm -rf -- "$d.new"; mkdir -p -- "$d.new"; '
    'tar -x --no-same-owner -C "$d.new"; rm -rf -- "$d.old"; '
    'if [ -e "$d" ]; then mv -- "$d" "$d.old"; fi; mv -- "$d.new" "$d"; '
    # A socket forwarded into the directory (the gateway's, see .relay) moves along: the
    # listener is the inode, so it keeps answering at the same path. Only those: any other
    # (an earlier task's agent's, in a pooled sandbox) stays behind with the old tree.
    'for n in "$@"; do s=$d.old/$n; if [ -S "$s" ] && [ ! -L "$s" ]; then mv -f -- "$s" "$d/"; '
    "fi; done 2>/dev/null; "
    # What the agent left unreadable (a 000 directory) must not stop the swap's cleanup.
    'chmod -R u+rwX -- "$d.old" 2>/dev/null || :; rm -rf -- "$d.old"'
)
"""Remote: unpack stdin into ``$1`` as a whole (replacing what was there), keeping the
sockets named by the further arguments (see :func:`push_argv`)."""
PULL = 'set -e; cd -- "$1"; tar -c --numeric-owner -f - .'
"""Remote: the mirror directory ``$1`` as a tar stream on stdout."""
PULL_LIMIT = 4 << 30
"""Largest mirror hal brings back (bytes of tar), whatever the sandbox's disk limit."""
PULL_SLACK = 1 << 20
"""Room for the tar's own bytes past a disk limit (see :func:`pull_limit`)."""
TOO_BIG_HINT = (
    "the host keeps what the last pull brought back; a larger tree needs a larger disk limit "
    "(HAL_DISK_MB, [resources] disk_mb)"
)


def pull_limit(disk_mb: int | None) -> int:
    """Largest tar a pull takes from a sandbox whose disk limit is ``disk_mb`` (None: no
    limit). Every byte of a non-sparse member's data is in the stream, so the stream bounds
    what the host writes; a tree within the limit makes a smaller tar but for the headers
    (512 bytes a member, a PAX record for a long name) of members ``du`` counts as nothing
    (empty files, links): a sixteenth of the limit and :data:`PULL_SLACK` are theirs."""
    if not disk_mb:
        return PULL_LIMIT
    disk = disk_mb << 20
    return min(PULL_LIMIT, disk + disk // 16 + PULL_SLACK)


async def pull_into(
    events: AsyncIterator[StreamEvent], target: str, host: Path, disk_mb: int | None
) -> None:
    """Spool the tar a pull's remote command writes (``events``) and replace ``host`` by its
    tree (:func:`unpack_into`). The agent decides the stream's size: past
    :func:`pull_limit` it is refused before anything is unpacked, the host copy kept as it
    was. The spool is a nameless file beside ``host`` (the session's disk, which hal
    watches, not a ``/tmp`` that may be memory), gone when closed."""
    limit = pull_limit(disk_mb)
    with tempfile.TemporaryFile(dir=host.parent) as spool:
        size, err, code = 0, b"", 255
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if event.kind == "stdout":
                    size += len(event.data)
                    if size > limit:
                        raise ExecError(too_big(target, disk_mb), hint=TOO_BIG_HINT)
                    await asyncio.to_thread(spool.write, event.data)
                elif event.kind == "stderr":
                    err = (err + event.data)[-2000:]
                else:
                    code = event.exit_code if event.exit_code is not None else 255
        if code != 0:
            raise ExecError(f"cannot bring back {target}: {err.decode(errors='replace')[-300:]}")
        await asyncio.to_thread(unpack_into, spool, host)


def too_big(target: str, disk_mb: int | None) -> str:
    """Why a pull of ``target`` was refused, in one line."""
    limit = pull_limit(disk_mb)
    if limit < PULL_LIMIT:
        return (f"{target} is over the sandbox's disk limit of {disk_mb} MiB (a tar of more "
                f"than {limit} bytes); not brought back")  # fmt: skip
    return f"{target} is over {PULL_LIMIT >> 30} GiB; not brought back"


def sockets_in(directory: Path) -> list[tuple[str, str]]:
    """(name, path) of every unix socket at the top of ``directory`` (links not followed):
    what a relay makes answer at the same place in the remote mirror (tar cannot carry one)."""
    found = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    found.append((entry.name, entry.path))
    return sorted(found)


def push_argv(remote: str, host: Path) -> list[str]:
    """The remote command of a push of ``host`` into ``remote``: the sockets hal forwards
    there (those at the top of ``host``, see :func:`sockets_in`) are the only ones kept."""
    names = [name for name, _ in sockets_in(host)]
    return ["sh", "-c", PUSH, "hal-push", remote, *names]


def host_dir(path: Path) -> Path:
    """The real directory behind ``path`` (a pool slot's link is hal's own, resolved once)."""
    return Path(os.path.realpath(path))


PUSH_CHUNK = 1 << 20
"""Bytes of tar per chunk of a push; at most :data:`PUSH_QUEUE` chunks wait in memory."""
PUSH_QUEUE = 4


def _plain(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Files, directories and links go out; FIFOs and device nodes do not (tarfile leaves
    sockets out itself): unpacked on the remote host they would be the agent's to open (a
    FIFO blocks a reader, a device node made by a root ssh user reaches the device)."""
    plain = member.isreg() or member.isdir() or member.issym() or member.islnk()
    return member if plain else None


def _add_all(archive: tarfile.TarFile, directory: Path) -> None:
    # One directory at a time from a list, not tarfile's recursion: a tree the agent made a
    # thousand levels deep (a pull brings back up to PATH_MAX) must not exhaust the stack.
    if not directory.is_dir():
        return
    pending = [""]
    while pending:
        here = pending.pop()
        for entry in sorted(os.listdir(directory / here if here else directory)):
            name = f"{here}/{entry}" if here else entry
            archive.add(directory / name, arcname=name, recursive=False, filter=_plain)
            if stat.S_ISDIR(os.lstat(directory / name).st_mode):
                pending.append(name)


def pack(directory: Path) -> bytes:
    """``directory`` as an uncompressed tar (links stored as links, never followed)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        _add_all(archive, directory)
    return buffer.getvalue()


class _Cancelled(Exception):
    """The consumer of a push stream went away."""


async def pack_stream(directory: Path) -> AsyncIterator[bytes]:
    """``directory`` as a tar stream, in chunks, made by a thread as they are sent: a push
    holds a few MiB at most, never the whole tar (a workspace may be gigabytes)."""
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=PUSH_QUEUE)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Cancelled

    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            put(bytes(data))
            return len(data)

    def produce() -> None:
        try:
            with io.BufferedWriter(Sink(), buffer_size=PUSH_CHUNK) as out:
                with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                    _add_all(archive, directory)
            put(None)
        except _Cancelled:
            return
        except BaseException as exc:  # anything, or the consumer waits for ever
            with contextlib.suppress(_Cancelled):
                put(exc)

    def get() -> bytes | BaseException | None:
        while not stop.is_set():
            try:
                return chunks.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    threading.Thread(target=produce, name="hal-push", daemon=True).start()
    try:
        while True:
            item = await asyncio.to_thread(get)
            if item is None:
                return
            if isinstance(item, BaseException):
                raise ExecError(f"cannot pack {directory}: {item}")
            yield item
    finally:
        stop.set()


class _Keep:
    """The extraction filter of one pull: the ``data`` filter's rules (no absolute or
    escaping names or links, no devices or FIFOs, no owners, no setuid or group/other
    write bits), judged on names alone. Python's own judges them by ``os.path.realpath``,
    which a chain of links longer than ``PATH_MAX`` fools before 3.11.13 (CVE-2025-4517:
    a link out of the tree, then files written through it) and which costs a walk of the
    whole path per member. What it refuses is left out rather than failing the whole pull
    (one such link must not cost the rest of the work): a name or hard link target with
    a component ``..`` or passing through an earlier member that is not a directory; a
    name an earlier member took; a hard link to anything but a file kept before; a
    symbolic link whose target is absolute or has a ``..`` that leaves the tree or steps
    back from anything but a directory of the archive; a sparse file. A tree ``tar -c``
    made has none of these but links out of it."""

    def __init__(self) -> None:
        self.symlinks: set[str] = set()
        self.others: set[str] = set()
        """Every other member that is not a directory (files, hard links)."""
        self.dirs: set[str] = {""}
        """Directories of the archive (members, and the parents of every member kept);
        never a name in the two sets above."""

    @staticmethod
    def _parts(name: str) -> list[str]:
        return [part for part in name.split("/") if part not in ("", ".")]

    def _taken(self, name: str) -> bool:
        return name in self.symlinks or name in self.others

    def _reached_by_a_link(self, parts: list[str]) -> bool:
        if not parts or ".." in parts or self._taken("/".join(parts)):
            return True
        # Checking stops at the first prefix known to be a directory (its own were checked).
        for n in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:n])
            if prefix in self.dirs:
                return False
            if self._taken(prefix):
                return True
        return False

    def _link_leaves(self, parts: list[str], target: str) -> bool:
        if target.startswith("/"):
            return True
        where = parts[:-1]
        for part in self._parts(target):
            if part != "..":
                where.append(part)
            elif not where or "/".join(where) not in self.dirs:
                return True  # above the tree, or back from a link: anywhere
            else:
                where.pop()
        return False

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        parts = self._parts(member.name)
        name = "/".join(parts)
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            return None
        if member.issparse():
            return None  # a size of its choosing from a few bytes (``tar -c`` makes none)
        if self._reached_by_a_link(parts) or (not member.isdir() and name in self.dirs):
            return None
        if member.islnk() and "/".join(self._parts(member.linkname)) not in self.others:
            return None  # only to a file kept before (tarfile's fallback raises KeyError)
        if member.issym() and self._link_leaves(parts, member.linkname):
            return None
        mode: int | None = None
        if member.isreg() or member.islnk():
            mode = member.mode & 0o755
            mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
        prefix = parts[:-1]
        while prefix and "/".join(prefix) not in self.dirs:
            self.dirs.add("/".join(prefix))
            prefix.pop()
        if member.issym():
            self.symlinks.add(name)
        elif member.isdir():
            self.dirs.add(name)
        else:
            self.others.add(name)
        # None leaves an attribute unset on extraction (tarfile's filters do the same).
        unset: dict[str, Any] = {"mode": mode, "uid": None, "gid": None, "uname": None,
                                 "gname": None}  # fmt: skip
        return member.replace(name=name, **unset, deep=False)


MAX_NAME_HEADER = 1 << 20
"""Largest pax or GNU long-name header of a pull (bytes): tarfile reads each whole into
memory; a tree's paths, however deep, come nowhere near."""
PAX_DIGIT_WORK = 1 << 26
"""What the long digit runs (over 32) of one stream's pax headers may cost tarfile's search
for ``hdrcharset`` (see :class:`_HeaderGuard`), as the sum of their squares: ~0.2 s of a
core. Shorter runs cost at most 16 steps a byte (the mtime and lengths of every member
of a pax tar hal packs); only a name of digits makes a longer one."""


class _HeaderGuard(tarfile.TarInfo):
    """Members of a pull's tar, whose extended headers are read with bounds tarfile lacks
    before 3.11.10: it searches each pax header with ``\\d+ hdrcharset=``, which takes time
    quadratic in a run of digits (CVE-2024-6232: 16 KB of them, 0.4 s; 1 MB, half an hour
    of the daemon's GIL), reads a header of any size whole, and a GNU sparse map of any
    length. A header over :data:`MAX_NAME_HEADER`, digit runs past :data:`PAX_DIGIT_WORK`
    and any sparse record (no ``tar -c`` of a pull makes one; :class:`_Keep` refuses
    sparse members) fail the pull before tarfile reads them."""

    def _proc_pax(self, archive: Any) -> tarfile.TarInfo:
        buf = _peek(archive.fileobj, self.size)
        if b"GNU.sparse." in buf:
            raise _Refused("a sparse file")
        # Per stream: the TarFile reading it carries the sum so far.
        work = getattr(archive, "hal_pax_work", 0)
        work += sum(len(run) ** 2 for run in _DIGITS.findall(buf))
        if work > PAX_DIGIT_WORK:
            raise _Refused("pax headers holding runs of digits without end")
        archive.hal_pax_work = work
        return super()._proc_pax(archive)  # type: ignore[misc, no-any-return]

    def _proc_gnulong(self, archive: Any) -> tarfile.TarInfo:
        _peek(archive.fileobj, self.size, read=False)
        return super()._proc_gnulong(archive)  # type: ignore[misc, no-any-return]


class _Refused(tarfile.ReadError):
    def __init__(self, what: str) -> None:
        super().__init__(f"the stream holds {what}")


_DIGITS = re.compile(rb"\d{33,}")


def _peek(fileobj: BinaryIO, size: int, *, read: bool = True) -> bytes:
    """A header's ``size`` bytes at ``fileobj``'s position (left where it was), refused
    past :data:`MAX_NAME_HEADER`."""
    if size > MAX_NAME_HEADER:
        raise _Refused(f"a name or extended header of {size} bytes")
    if not read:
        return b""
    at = fileobj.tell()
    try:
        return fileobj.read(size)
    finally:
        fileobj.seek(at)


def unpack_into(spool: BinaryIO, target: Path) -> None:
    """Replace ``target`` by the tree in the tar ``spool`` (unpacked beside it, renamed in).
    A stream tarfile cannot read, or whose values no file can take (a time past
    ``time_t``), fails as :class:`ExecError`, the host copy kept as it was."""
    spool.seek(0)
    parent = target.parent
    fresh = parent / f".{target.name}.hal-pull-{secrets.token_hex(4)}"
    old = parent / f".{target.name}.hal-old-{secrets.token_hex(4)}"
    fresh.mkdir(mode=0o700)
    try:
        with tarfile.open(fileobj=spool, mode="r:", tarinfo=_HeaderGuard) as archive:
            archive.extractall(fresh, filter=_Keep())
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o755
        fresh.chmod(mode)
        if target.exists():
            fs.replace(target, old)
        try:
            fs.replace(fresh, target)
        except OSError:
            if old.exists() and not target.exists():
                fs.replace(old, target)  # never leave the session without its directory
            raise
    except (tarfile.TarError, OSError, ValueError, OverflowError) as exc:
        # ValueError, OverflowError: what tarfile makes of a forged field (a NaN or
        # out-of-range time, an undecodable charset, a number past int's digit limit).
        raise ExecError(f"cannot bring back {target}: {exc}") from exc
    finally:
        # The agent's tree: removed through directory fds (no depth exhausts the stack).
        for leftover in (fresh, old):
            try:
                agentfs.remove_tree(leftover)
            except UnsafePath as exc:
                raise ExecError(f"cannot bring back {target}: {exc.message}") from exc
