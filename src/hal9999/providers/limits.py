"""What a spec's limits come to on a provider that enforces them, and the disk watchdog.

The defaults a :class:`Resources` field left unset gets are :mod:`hal9999.hostlimits`'s
(``0`` asks for no limit); a provider reads them here.
"""

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from hal9999 import fs
from hal9999.errors import DiskFull, DiskLimitExceeded
from hal9999.hostlimits import DEFAULT_DISK_FILES as DEFAULT_DISK_FILES
from hal9999.hostlimits import DEFAULT_DISK_MB as DEFAULT_DISK_MB
from hal9999.hostlimits import DEFAULT_MEMORY_SHARE as DEFAULT_MEMORY_SHARE
from hal9999.hostlimits import DEFAULT_PIDS as DEFAULT_PIDS
from hal9999.hostlimits import MIN_DEFAULT_MEMORY_MB as MIN_DEFAULT_MEMORY_MB
from hal9999.hostlimits import Totals, totals
from hal9999.hostlimits import defaults as defaults
from hal9999.hostlimits import effective as effective
from hal9999.hostlimits import explicit as explicit
from hal9999.hostlimits import host_cpus as host_cpus
from hal9999.hostlimits import host_memory_mb as host_memory_mb
from hal9999.spec import Resources

FIRST_DISK_CHECK_S = 1.0
DISK_CHECK_S = 10.0
"""The watchdog measures after 1 s, then backs off to every 10 s (``du`` walks the tree)."""
DISK_CHECK_SHARE = 0.01
MAX_DISK_CHECK_S = 60.0
"""A tree that takes longer to walk is walked less often: ``du`` runs at most 1 % of the
time for each task (and at least once a minute), so a thousand agents on large checkouts
do not keep the host's cores walking trees."""
BALLAST_NAME = ".disk-reserve"
BALLAST_BYTES = 4 << 20
"""Reserved in hal's home: room to record a task's end and clean up on a full disk."""
FULL_BELOW_BYTES = 1 << 20
"""Less free space than this on the disk of hal's home counts as full."""
FULL_BELOW_FILES = 64
FULL_BELOW_FILES_SHARE = 0.005
"""Fewer free inodes than this share of the filesystem's (and never fewer than
:data:`FULL_BELOW_FILES`) on the disk of hal's home counts as full too: a file takes one
whatever its size, and an agent's millions of empty files fill a disk that no
byte count (``du``, free space) sees filling."""


_CONTROLLER = {"memory_mb": "memory", "pids": "pids", "cpus": "cpu"}


def granted(resources: Resources, offered: frozenset[str], cpus: float | None = None) -> Resources:
    """The limits a sandbox asking for ``resources`` gets on a provider that enforces them,
    where the host's cgroups offer the controllers ``offered``: the defaults for what it leaves
    unset, but not a default the host has no controller for (what was asked is kept: the
    provider refuses it with the controller named)."""
    asked = explicit(resources)
    return effective(resources, cpus).model_copy(
        update={
            name: None
            for name, needed in _CONTROLLER.items()
            if getattr(asked, name) is None and needed not in offered
        }
    )


class GrantedLimits:
    """:func:`granted`, kept by what it depends on: the limits asked, the controllers offered,
    the totals and the host's cores, read again at each look-up (one ``sched_getaffinity``),
    so a kept answer is never stale; the host's memory is read once a process
    (:func:`host_memory_mb`).
    Each sandbox handle and each disk check asks (three model validations and the
    host's state read again each time would be paid by every task)."""

    MAX_KEPT = 64
    """A daemon sees few distinct limits; a client sending many only empties the cache."""

    def __init__(self) -> None:
        self._kept: dict[tuple[Resources, frozenset[str], float, Totals], Resources] = {}

    def get(self, resources: Resources, offered: frozenset[str]) -> Resources:
        """What :func:`granted` returns for these, now."""
        cpus = host_cpus()
        key = (resources, offered, cpus, totals())
        kept = self._kept.get(key)
        if kept is None:
            if len(self._kept) >= self.MAX_KEPT:
                self._kept.clear()
            kept = self._kept[key] = granted(resources, offered, cpus)
        return kept


class DiskUse(NamedTuple):
    """How much disk a sandbox's writable host dirs hold, against its limits."""

    used_bytes: int
    limit_bytes: int | None
    """None when the sandbox has no disk limit."""
    used_files: int = 0
    """Files, directories and links (names: a file linked twice counts twice)."""
    limit_files: int | None = None
    """None when the sandbox has no limit on files."""

    @property
    def over(self) -> bool:
        """Whether the sandbox holds more bytes than its limit."""
        return self.limit_bytes is not None and self.used_bytes > self.limit_bytes

    @property
    def over_files(self) -> bool:
        """Whether the sandbox holds more files than its limit."""
        return self.limit_files is not None and self.used_files > self.limit_files


@runtime_checkable
class DiskWatched(Protocol):
    """A sandbox whose disk use the host can measure while a task runs."""

    async def disk_use(self) -> DiskUse:
        """What its writable dirs hold now, and its limit."""
        ...


async def use_of(dirs: Sequence[Path], resources: Resources) -> DiskUse:
    """What ``dirs`` hold together, against the disk limits of ``resources`` (limits
    already made effective): bytes (``du``: a file linked twice counted once) and names
    (``find``: files, directories and links, each name once), two walks side by side, each
    on one filesystem per dir, links never followed. Names, not inodes: ``find`` reads the
    directories alone, where ``du --inodes`` stats every file (0.36 s of CPU against 0.14 s
    for 100k files), and a second name for a file the agent made only counts against it."""
    import asyncio

    if not dirs:
        return DiskUse(0, None)
    paths = [str(Path(d).absolute()) for d in dirs]  # never an option of find
    walks = [_walk(["du", "-s", "-x", "-c", "-B1", "--", *paths], _du_total)]
    if resources.disk_files:
        walks.append(_walk(["find", *paths, "-xdev", "-printf", "x"], len))
    counts = await asyncio.gather(*walks)
    disk_mb, files = resources.disk_mb, resources.disk_files
    used_files = counts[1] if files else 0
    return DiskUse(counts[0], disk_mb << 20 if disk_mb else None, used_files, files or None)


async def _walk(argv: list[str], read: Callable[[bytes], int]) -> int:
    """What ``read`` makes of the output of the walk ``argv``. A part it could not read (a
    000 directory the agent made, where files hide from the count) is read again as root of
    a user namespace of hal's own: that root may read any file hal's user owns, and nothing
    more."""
    count, complete = await _run(argv, read)
    if not complete and os.geteuid() != 0 and shutil.which("unshare"):
        again, _ = await _run(["unshare", "--user", "--map-root-user", "--", *argv], read)
        count = max(count, again)
    return count


async def _run(argv: list[str], read: Callable[[bytes], int]) -> tuple[int, bool]:
    """``read`` of the output of ``argv``, and whether it exited 0 (``du`` and ``find`` exit
    1 past a part they could not read, or a file gone while they walked: the count of what
    they read still stands)."""
    import asyncio  # here: the CLI imports this module for release_if_full alone

    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return read(out), proc.returncode == 0


def _du_total(out: bytes) -> int:
    """The number on the last line of ``du -c``'s output (0 if none)."""
    try:
        return int(out.decode(errors="replace").splitlines()[-1].split()[0])
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
        with contextlib.suppress(OSError):
            if free_bytes(self.path.parent) < 4 * BALLAST_BYTES:
                return
            with fs.atomic(self.path, mode=0o600, durable=False) as out:
                os.posix_fallocate(out.fd, 0, BALLAST_BYTES)

    def release(self) -> None:
        """Give the space back (for the writes that record and clean up a task)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def release_if_full(home: Path) -> bool:
    """Give up the reserve in ``home`` when its disk is full, so hal can still open its store
    (even a read needs room for SQLite's shared-memory file) and say what is wrong; whether
    it was full."""
    with contextlib.suppress(OSError):
        if full_of(home) is not None:
            Ballast(home).release()
            return True
    return False


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


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class DiskWatchdog:
    """Stops a task whose sandbox outgrows its disk limit, or that fills the disk holding
    hal's home. :meth:`check` is called from the loop that follows the agent: free space is a
    ``statvfs`` away and checked every time, the sandbox's use (``du``) now and then."""

    def __init__(self, sandbox: object, home: Path, records: Sequence[Path] = ()) -> None:
        self.sandbox = sandbox if isinstance(sandbox, DiskWatched) else None
        self.home = home
        self.records = records
        """Host files of the task that count against its disk limit too (its log and
        events: a hive agent's grow turn after turn)."""
        self.ballast = Ballast(home)
        self._interval = FIRST_DISK_CHECK_S
        self._due = time.monotonic() + self._interval

    async def start(self) -> None:
        """Reserve the space given up when the disk fills. Reserved already (every task but
        the first): one ``stat`` here, no thread hop."""
        if not self.ballast.path.exists():
            import asyncio

            await asyncio.to_thread(self.ballast.ensure)

    async def check(self, room: int = 1) -> None:
        """:class:`DiskFull` or :class:`DiskLimitExceeded` when the task must stop: its
        sandbox holds more than ``room`` times its limits (more than 1 while its result is
        collected, whose copies are written there too)."""
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
        if self.records:
            use = use._replace(used_bytes=use.used_bytes + sum(map(_file_bytes, self.records)))
        ended = time.monotonic()
        self._interval = min(self._interval * 2, DISK_CHECK_S)
        walk = min((ended - began) / DISK_CHECK_SHARE, MAX_DISK_CHECK_S)
        self._due = ended + max(self._interval, walk)
        over = "" if room == 1 else f"{room} times "
        during = "" if room == 1 else " while its result was collected"
        if use.limit_files is not None and use.used_files > use.limit_files * room:
            raise DiskLimitExceeded(
                f"the sandbox holds {use.used_files} files, directories and links, over "
                f"{over}its limit of {use.limit_files} (disk_files; workspace, home and /tmp "
                f"together){during}",
                hint="raise disk_files under [resources] (HAL_DISK_FILES; 0 for no limit), "
                "or have the task clean up after itself",
            )
        if use.limit_bytes is not None and use.used_bytes > use.limit_bytes * room:
            raise DiskLimitExceeded(
                f"the sandbox holds {use.used_bytes >> 20} MiB of files, over {over}its disk "
                f"limit of {use.limit_bytes >> 20} MiB (workspace, home and /tmp together"
                f"{', with its log and events' if self.records else ''}){during}",
                hint="raise disk_mb under [resources] (0 for no limit), or have the task "
                "clean up after itself",
            )
        if use.limit_bytes is None and use.limit_files is None:
            self.sandbox = None  # no limit: nothing more to measure
