"""Moving a session directory between the hal host and its mirror on the remote host.

The session lives on the hal host; a remote sandbox works on a mirror of it. A *push* sends
a host directory as a tar stream and the remote side unpacks it into a fresh directory that
then replaces the mirror (so files deleted on the host are gone there too). A *pull* brings a
writable mirror directory back the same way: the host unpacks the remote tar into a fresh
sibling with :mod:`tarfile`'s ``data`` filter (no absolute or escaping names or links, no
devices, no owners; a link created by the archive is never written through), then swaps it
in by rename. The host never follows a path the agent made: the tree it writes is new, and
the only paths it resolves are its own (the session dir, a pool slot link).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import secrets
import shutil
import stat
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from hal9999.errors import ExecError

PUSH = (
    'set -e; d=$1; rm -rf -- "$d.new"; mkdir -p -- "$d.new"; '
    'tar -x --no-same-owner -C "$d.new"; rm -rf -- "$d.old"; '
    'if [ -e "$d" ]; then mv -- "$d" "$d.old"; fi; mv -- "$d.new" "$d"; '
    # A socket forwarded into the directory (the gateway's, see .relay) moves along: the
    # listener is the inode, so it keeps answering at the same path.
    'for s in "$d.old"/*; do if [ -S "$s" ] && [ ! -L "$s" ]; then mv -f -- "$s" "$d/"; fi; '
    'done 2>/dev/null; '
    # What the agent left unreadable (a 000 directory) must not stop the swap's cleanup.
    'chmod -R u+rwX -- "$d.old" 2>/dev/null || :; rm -rf -- "$d.old"'
)
"""Remote: unpack stdin into ``$1`` as a whole (replacing what was there)."""
PULL = 'set -e; cd -- "$1"; tar -c --numeric-owner -f - .'
"""Remote: the mirror directory ``$1`` as a tar stream on stdout."""
PULL_LIMIT = 4 << 30
"""Largest mirror hal brings back (bytes of tar)."""


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


def host_dir(path: Path) -> Path:
    """The real directory behind ``path`` (a pool slot's link is hal's own, resolved once)."""
    return Path(os.path.realpath(path))


PUSH_CHUNK = 1 << 20
"""Bytes of tar per chunk of a push; at most :data:`PUSH_QUEUE` chunks wait in memory."""
PUSH_QUEUE = 4


def _add_all(archive: tarfile.TarFile, directory: Path) -> None:
    if directory.is_dir():
        for entry in sorted(os.listdir(directory)):
            archive.add(directory / entry, arcname=entry, recursive=True)


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
        except (OSError, tarfile.TarError) as exc:
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


def _keep(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # What the data filter refuses (an absolute or escaping link, a device) is left out
    # rather than failing the whole pull: one such link must not cost the rest of the work.
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None


def unpack_into(spool: BinaryIO, target: Path) -> None:
    """Replace ``target`` by the tree in the tar ``spool`` (unpacked beside it, renamed in)."""
    spool.seek(0)
    parent = target.parent
    fresh = parent / f".{target.name}.hal-pull-{secrets.token_hex(4)}"
    old = parent / f".{target.name}.hal-old-{secrets.token_hex(4)}"
    fresh.mkdir(mode=0o700)
    try:
        with tarfile.open(fileobj=spool, mode="r:") as archive:
            archive.extractall(fresh, filter=_keep)
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o755
        fresh.chmod(mode)
        if target.exists():
            os.rename(target, old)
        try:
            os.rename(fresh, target)
        except OSError:
            if old.exists() and not target.exists():
                os.rename(old, target)  # never leave the session without its directory
            raise
    except (tarfile.TarError, OSError) as exc:
        raise ExecError(f"cannot bring back {target}: {exc}") from exc
    finally:
        for leftover in (fresh, old):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(leftover)
