"""Default resource limits, and what a spec's limits come to on a provider that enforces them.

A :class:`Resources` field left unset gets the default below (a sandbox is never unlimited by
accident); ``0`` asks for no limit. The defaults bound what one runaway task can take from the
host, while leaving a normal build its room:

- ``pids`` 4096: far above what a compiler or test runner forks, far below a fork bomb's need;
- ``memory_mb`` half the host's RAM: one task cannot push the host into its OOM killer;
- ``cpus`` every core: no slowdown, but a quota the task cannot raise;
- ``disk_mb`` 20 GiB: workspace, home and scratch together, and no single file larger.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from hal9999.errors import DiskFull, DiskLimitExceeded
from hal9999.spec import Resources

DEFAULT_PIDS = 4096
DEFAULT_MEMORY_SHARE = 0.5
"""Share of the host's RAM a sandbox may use by default."""
DEFAULT_DISK_MB = 20 << 10
MIN_DEFAULT_MEMORY_MB = 512
FIRST_DISK_CHECK_S = 1.0
DISK_CHECK_S = 10.0
"""The watchdog measures after 1 s, then backs off to every 10 s (``du`` walks the tree)."""
DISK_CHECK_SHARE = 0.01
MAX_DISK_CHECK_S = 60.0
"""A tree that takes longer to walk is walked less often: ``du`` runs at most 1 % of the
time for each task (and at least once a minute), so a thousand agents on large checkouts
do not keep the host's cores walking trees (issue 16)."""
BALLAST_NAME = ".disk-reserve"
BALLAST_BYTES = 4 << 20
"""Reserved in hal's home: room to record a task's end and clean up on a full disk."""
FULL_BELOW_BYTES = 1 << 20
"""Less free space than this on the disk of hal's home counts as full."""
FULL_BELOW_FILES = 64
FULL_BELOW_FILES_SHARE = 0.005
"""Fewer free inodes than this share of the filesystem's (and never fewer than
:data:`FULL_BELOW_FILES`) on the disk of hal's home counts as full too: a file takes one
whatever its size, and an agent's millions of empty files (stop 48) fill a disk that no
byte count (``du``, free space) sees filling."""


@cache
def host_memory_mb() -> int | None:
    """The host's RAM in MiB (None when /proc/meminfo cannot tell)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                name, _, value = line.partition(":")
                if name == "MemTotal":
                    return int(value.split()[0]) >> 10
    except (OSError, ValueError, IndexError):
        pass
    return None


def defaults() -> Resources:
    """The limits a sandbox gets for every field its spec leaves unset."""
    memory = host_memory_mb()
    share = None if memory is None else int(memory * DEFAULT_MEMORY_SHARE)
    return Resources(
        cpus=float(len(os.sched_getaffinity(0)) or 1),
        memory_mb=None if share is None else max(MIN_DEFAULT_MEMORY_MB, share),
        pids=DEFAULT_PIDS,
        disk_mb=DEFAULT_DISK_MB,
    )


def effective(resources: Resources) -> Resources:
    """``resources`` with unset fields defaulted and ``0`` turned into ``None`` (no limit)."""
    base = defaults()
    values = {}
    for name in Resources.model_fields:
        value = getattr(resources, name)
        if value is None:
            value = getattr(base, name)
        values[name] = value or None
    return Resources.model_validate(values)


def explicit(resources: Resources) -> Resources:
    """Only the limits ``resources`` asks for by value (unset and ``0`` become ``None``)."""
    return Resources.model_validate(
        {name: getattr(resources, name) or None for name in Resources.model_fields}
    )


class DiskUse(NamedTuple):
    """How much disk a sandbox's writable host dirs hold, against its limit."""

    used_bytes: int
    limit_bytes: int | None
    """None when the sandbox has no disk limit."""

    @property
    def over(self) -> bool:
        """Whether the sandbox holds more than its limit."""
        return self.limit_bytes is not None and self.used_bytes > self.limit_bytes


@runtime_checkable
class DiskWatched(Protocol):
    """A sandbox whose disk use the host can measure while a task runs."""

    async def disk_use(self) -> DiskUse:
        """What its writable dirs hold now, and its limit."""
        ...


async def measure(dirs: Sequence[Path]) -> int:
    """Bytes allocated under ``dirs`` together (``du``: one filesystem each, links never
    followed, a file linked twice counted once)."""
    if not dirs:
        return 0
    import asyncio  # here: the CLI imports this module for release_if_full alone

    proc = await asyncio.create_subprocess_exec(
        "du", "-s", "-x", "-c", "-B1", "--", *map(str, dirs),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    # du exits 1 when it could not read a part (a 000 directory the agent made): the total
    # of what it could read still stands, and the unread part is at most the limit's slack.
    lines = out.decode(errors="replace").splitlines()
    try:
        return int(lines[-1].split()[0])
    except (IndexError, ValueError):
        return 0


class Ballast:
    """Space reserved in hal's home (a preallocated file), given up when the disk fills so
    that hal can still record how the task ended and clean up after it."""

    def __init__(self, home: Path) -> None:
        self.path = home / BALLAST_NAME

    def ensure(self) -> None:
        """Reserve the space, unless it is reserved already or the disk is nearly full."""
        if self.path.exists():
            return
        tmp = self.path.with_name(f"{BALLAST_NAME}.tmp")
        try:
            if free_bytes(self.path.parent) < 4 * BALLAST_BYTES:
                return
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.posix_fallocate(fd, 0, BALLAST_BYTES)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def release(self) -> None:
        """Give the space back (for the writes that record and clean up a task)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def release_if_full(home: Path) -> None:
    """Give up the reserve in ``home`` when its disk is full, so hal can still open its store
    (even a read needs room for SQLite's shared-memory file) and say what is wrong."""
    with contextlib.suppress(OSError):
        if full_of(home) is not None:
            Ballast(home).release()


def free_bytes(path: Path) -> int:
    """Space an unprivileged writer still has on the filesystem of ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def full_of(path: Path) -> str | None:
    """What the filesystem of ``path`` is full of ("space", "files"), or None; a filesystem
    that counts no inodes (``f_files`` 0: btrfs) is never full of files."""
    info = os.statvfs(path)
    if info.f_bavail * info.f_frsize < FULL_BELOW_BYTES:
        return "space"
    least = max(FULL_BELOW_FILES, int(info.f_files * FULL_BELOW_FILES_SHARE))
    if info.f_files and info.f_favail < least:
        return "files"
    return None


class DiskWatchdog:
    """Stops a task whose sandbox outgrows its disk limit, or that fills the disk holding
    hal's home. :meth:`check` is called from the loop that follows the agent: free space is a
    ``statvfs`` away and checked every time, the sandbox's use (``du``) now and then."""

    def __init__(self, sandbox: object, home: Path) -> None:
        self.sandbox = sandbox if isinstance(sandbox, DiskWatched) else None
        self.home = home
        self.ballast = Ballast(home)
        self._interval = FIRST_DISK_CHECK_S
        self._due = time.monotonic() + self._interval

    async def start(self) -> None:
        """Reserve the space given up when the disk fills. Reserved already (every task but
        the first): one ``stat`` here, no thread hop (issue 16)."""
        if not self.ballast.path.exists():
            import asyncio

            await asyncio.to_thread(self.ballast.ensure)

    async def check(self) -> None:
        """:class:`DiskFull` or :class:`DiskLimitExceeded` when the task must stop."""
        try:
            full = full_of(self.home)
        except OSError:
            full = None
        if full == "space":
            self.ballast.release()
            raise DiskFull(
                f"the disk holding hal's home ({self.home}) is full; the task was stopped",
                hint="free space there (the task's session is kept), or lower disk_mb under "
                "[resources] so a task stops before the disk fills",
            )
        if full == "files":
            self.ballast.release()
            raise DiskFull(
                f"the disk holding hal's home ({self.home}) has almost no files (inodes) "
                "left; the task was stopped",
                hint="remove files there (a task's session may hold many: `hal task rm`)",
            )
        if self.sandbox is None or time.monotonic() < self._due:
            return
        began = time.monotonic()
        use = await self.sandbox.disk_use()
        ended = time.monotonic()
        self._interval = min(self._interval * 2, DISK_CHECK_S)
        walk = min((ended - began) / DISK_CHECK_SHARE, MAX_DISK_CHECK_S)
        self._due = ended + max(self._interval, walk)
        if use.limit_bytes is None:
            self.sandbox = None  # no limit: nothing more to measure
        elif use.over:
            raise DiskLimitExceeded(
                f"the sandbox holds {use.used_bytes >> 20} MiB of files, over its disk limit "
                f"of {use.limit_bytes >> 20} MiB (workspace, home and /tmp together)",
                hint="raise disk_mb under [resources] (0 for no limit), or have the task "
                "clean up after itself",
            )
