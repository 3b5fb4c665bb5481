"""The work directories of ``hal image build``: nothing mounted in them survives the build.

debootstrap mounts ``proc`` and ``sys`` inside the root filesystem it makes, and a build step
that fails (or is killed) can leave them mounted. A mount left in a cached stage is carried
into every later image, and a later ``rm -rf`` of the data directory walks through it into
the host's ``/proc``. So a work directory is never deleted, renamed into the cache or copied
while anything is mounted under it: everything is unmounted first, and it is checked that
nothing remains. One build of an image runs at a time, and the shared cached stages are
made by one build at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from hal9999 import flock, fs
from hal9999.errors import ConfigError, ProviderError
from hal9999.providers.qemu import mount as qemumount

_LOCK_POLL_S = 0.5


def unmount_under(path: Path) -> None:
    """Unmount everything at or below ``path``; ProviderError naming what stays mounted."""
    real = path.resolve()
    if not qemumount.mounts_under(real):
        return
    try:
        qemumount.unmount_all(real)
    except ProviderError:
        left = ", ".join(map(str, qemumount.mounts_under(real)))
        raise ProviderError(
            f"image build: {left} stay mounted under {real}; refusing to delete or cache it",
            hint="unmount them by hand (umount -l PATH), then run `hal image build` again",
        ) from None


def clear(path: Path) -> None:
    """Delete a work directory, after unmounting everything under it (never through a mount)."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def seal(work: Path, done: Path) -> None:
    """Move a finished stage into the cache, once nothing is mounted under it."""
    unmount_under(work)
    clear(done)
    fs.replace(work, done)


@contextlib.contextmanager
def build_lock(lock_dir: Path, name: str) -> Iterator[None]:
    """Held for one build of image ``name``; a second build of it is refused at once."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"build-{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"image {name!r} is being built by another `hal image build` (pid {holder})",
                hint="wait for it to finish, or build under another --name",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def stages_lock(lock_dir: Path) -> AsyncIterator[None]:
    """Held while making the cached stages every image shares; other builds wait for it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    async with flock.held(lock_dir / "stages.lock", poll=_LOCK_POLL_S):
        yield
