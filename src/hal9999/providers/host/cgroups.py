"""Per-sandbox control groups on cgroup v1 or v2: limits, membership, a reliable kill.

A sandbox's cgroup lives at ``<hierarchy>/hal9999/<sandbox-id>`` (one directory per v1
hierarchy, one in total on v2). The parent, ``<hierarchy>/hal9999``, carries the totals of
:func:`hal9999.hostlimits.totals` as its memory and pids limits: whatever each sandbox
may use, all of them together stay within them.

Nothing here moves the calling process: a launcher writes itself into
:meth:`Cgroup.join_files` before it execs the sandboxed program, so every descendant is born
inside the group and cannot leave it without privilege.
"""

import asyncio
import contextlib
import errno
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal, NamedTuple

from hal9999.errors import CapabilityError, ProviderError
from hal9999.hostread import read_all
from hal9999.spec import Resources

PARENT = "hal9999"
"""Directory under each hierarchy that holds one cgroup per sandbox."""
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu")
_parent_written: dict[Path, str] = {}
"""The limits this process wrote into the parent cgroup, by control file."""
KILL_DEADLINE = 3.0
RMDIR_DEADLINE = 1.0
_ESCAPE = re.compile(r"\\([0-7]{3})")


class CgroupLimits(NamedTuple):
    """Kernel-level limits derived from :class:`Resources`."""

    memory_bytes: int | None = None
    pids: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int = CPU_PERIOD_US

    @classmethod
    def from_resources(cls, resources: Resources) -> "CgroupLimits":
        """The limits that enforce ``resources`` as given (unset and ``0`` mean no limit;
        :func:`hal9999.providers.limits.effective` fills in the defaults first)."""
        return cls(
            memory_bytes=resources.memory_mb << 20 if resources.memory_mb else None,
            pids=resources.pids or None,
            cpu_quota_us=max(1000, round(resources.cpus * CPU_PERIOD_US))
            if resources.cpus
            else None,
        )

    def controllers(self) -> set[str]:
        """The cgroup controllers these limits need."""
        wanted = {
            "memory": self.memory_bytes is not None,
            "pids": self.pids is not None,
            "cpu": self.cpu_quota_us is not None,
        }
        return {name for name, needed in wanted.items() if needed}


class Cgroup(ABC):
    """One sandbox's cgroup, possibly spread over several v1 hierarchies."""

    version: Literal[1, 2]

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    @abstractmethod
    def apply(self, limits: CgroupLimits) -> None:
        """Write ``limits`` into the cgroup's control files."""

    @abstractmethod
    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files: every process inside, one pid a line."""
        return [str(path / "cgroup.procs") for path in self.dirs]

    def join_files(self) -> list[str]:
        """The files a single-threaded launcher writes ``0`` (itself) into to join: on v2
        ``cgroup.procs``; on v1 see :meth:`CgroupV1.join_files`."""
        return self.procs_files()

    def pids(self) -> set[int]:
        """Every process currently inside (none once the cgroup is gone, even when another
        ``hal`` process removes it in the middle of the read)."""
        found: set[int] = set()
        for path in self.dirs:
            try:
                found.update(int(line) for line in read_all(str(path / "cgroup.procs")).split())
            except OSError as exc:
                if not removed(exc):
                    raise
        return found

    def exists(self) -> bool:
        """Whether the cgroup directories are all present."""
        return all(path.is_dir() for path in self.dirs)

    async def kill_all(self) -> None:
        """SIGKILL every process inside, repeating until none is left (forks race the kill)."""
        deadline = time.monotonic() + KILL_DEADLINE
        # Never ourselves, should hal itself have been started inside the sandbox's cgroup.
        while pids := self.pids() - {os.getpid()}:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"processes {sorted(pids)} survived SIGKILL in cgroup {self.dirs[0]}"
                )
            await asyncio.sleep(0.01)

    async def remove(self) -> None:
        """Kill what is left and remove the directories; idempotent."""
        await self.kill_all()
        for path in self.dirs:
            await _rmdir_retry(path)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready form, so a later process can find the cgroup again."""
        return {"version": self.version, "dirs": [str(path) for path in self.dirs]}

    @staticmethod
    def from_record(record: dict[str, Any]) -> "Cgroup":
        """The cgroup described by :meth:`to_record`."""
        dirs = [Path(path) for path in record["dirs"]]
        return CgroupV2(dirs) if record["version"] == 2 else CgroupV1(dirs)


class CgroupV1(Cgroup):
    """A cgroup with one directory in each of the memory, pids and cpu hierarchies."""

    version: Literal[1, 2] = 1

    def __init__(self, dirs: list[Path], controllers: dict[str, Path] | None = None) -> None:
        super().__init__(dirs)
        self._controllers = controllers
        """Which of ``dirs`` holds each controller, when the host said (see
        :meth:`CgroupHost.cgroup`); None: looked up by its files (a cgroup from a record)."""
        self._oom_file: str | None = None
        """Where the memory hierarchy's OOM counter is ("": none), once looked up: it is
        read before every command with a memory limit."""

    def _dir(self, controller: str) -> Path | None:
        if self._controllers is not None:  # every reset writes the limits
            return self._controllers.get(controller)
        for path in self.dirs:
            if (path / f"{controller}.{'max' if controller == 'pids' else 'stat'}").exists():
                return path
        return None

    def join_files(self) -> list[str]:
        """Each hierarchy's ``tasks`` file: writing ``0`` there moves the writing thread,
        which is the whole of a single-threaded launcher, and spares the kernel's global
        lock for whole-process moves that ``cgroup.procs`` takes, which waits for an RCU
        grace period whenever it has not been taken for a few milliseconds."""
        return [str(path / "tasks") for path in self.dirs]

    def apply(self, limits: CgroupLimits) -> None:
        """Write ``limits`` into the cgroup's control files."""
        memory, pids, cpu = self._dir("memory"), self._dir("pids"), self._dir("cpu")
        _unset_v1(memory, pids, cpu, limits)
        if limits.memory_bytes is not None:
            assert memory is not None, "create() checked the memory hierarchy"
            _write(memory / "memory.limit_in_bytes", limits.memory_bytes)
            # memsw is memory+swap; equal limits mean no swap at all (absent without swapaccount).
            if (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", limits.memory_bytes)
        if limits.pids is not None:
            assert pids is not None, "create() checked the pids hierarchy"
            _write(pids / "pids.max", limits.pids)
        if limits.cpu_quota_us is not None:
            assert cpu is not None, "create() checked the cpu hierarchy"
            _write(cpu / "cpu.cfs_period_us", limits.cpu_period_us)
            _write(cpu / "cpu.cfs_quota_us", limits.cpu_quota_us)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        if self._oom_file is None:
            memory = self._dir("memory")
            self._oom_file = "" if memory is None else str(memory / "memory.oom_control")
        return _read_counter(self._oom_file, "oom_kill") if self._oom_file else 0


class CgroupV2(Cgroup):
    """A cgroup in the unified hierarchy."""

    version: Literal[1, 2] = 2

    def apply(self, limits: CgroupLimits) -> None:
        """Write ``limits`` into the cgroup's control files."""
        (path,) = self.dirs
        # A limit the spec leaves unset goes back to unlimited: a reused cgroup keeps nothing
        # an earlier setting (or anything else) wrote there.
        unset = {
            "memory.max": limits.memory_bytes is None,
            "memory.swap.max": limits.memory_bytes is None,
            "pids.max": limits.pids is None,
            "cpu.max": limits.cpu_quota_us is None,
        }
        for name, reset in unset.items():
            if reset and (path / name).exists():
                _write(path / name, "max")
        if limits.memory_bytes is not None:
            _write(path / "memory.max", limits.memory_bytes)
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", 0)
        if limits.pids is not None:
            _write(path / "pids.max", limits.pids)
        if limits.cpu_quota_us is not None:
            _write(path / "cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us}")

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        return _read_counter(f"{self.dirs[0]}/memory.events", "oom_kill")

    async def kill_all(self) -> None:
        """Kill everything inside; ``cgroup.kill`` does it atomically where the kernel has it."""
        kill_file = self.dirs[0] / "cgroup.kill"
        if kill_file.exists():
            try:
                _write(kill_file, 1)
            except OSError as exc:
                if not removed(exc):
                    raise
        await super().kill_all()


class CgroupHost(NamedTuple):
    """A writable cgroup hierarchy this host offers, and which controllers it has."""

    version: Literal[1, 2]
    roots: dict[str, Path]
    """v1: controller -> hierarchy mount; v2: ``{"unified": base}``."""
    controllers: frozenset[str]

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        """Create (or reuse) the cgroup ``name`` and apply ``limits``."""
        needed = limits.controllers()
        missing = needed - self.controllers
        if missing:
            raise CapabilityError(
                f"cgroup v{self.version} here lacks the {', '.join(sorted(missing))} "
                "controller(s) needed for the requested resource limits",
                hint="drop the resource limits, or enable the controllers for this user",
            )
        try:
            cgroup = self._mkdirs(name, needed)
            cgroup.apply(limits)
        except OSError as exc:
            raise CapabilityError(
                f"cannot set up cgroup {name!r} under {next(iter(self.roots.values()))}: {exc}",
                hint="run as root or in a delegated cgroup, or drop the resource limits",
            ) from exc
        return cgroup

    def cgroup(self, name: str) -> Cgroup:
        """The cgroup ``name`` as :meth:`create` makes it, without making it: its directories
        depend on the name alone, so a record can name them before they exist."""
        if self.version == 1:
            # dict.fromkeys dedupes hierarchies that mount several controllers together.
            dirs = {c: self.roots[c] / PARENT / name for c in V1_CONTROLLERS if c in self.roots}
            return CgroupV1(list(dict.fromkeys(dirs.values())), dirs)
        return CgroupV2([self.roots["unified"] / PARENT / name])

    def parent_files(self) -> dict[str, Path]:
        """The control files of the cgroup holding every sandbox that bound their total
        (``memory``, ``pids``), where this host offers the controller."""
        if self.version == 1:
            files = {"memory": "memory.limit_in_bytes", "pids": "pids.max"}
            return {c: self.roots[c] / PARENT / f for c, f in files.items() if c in self.roots}
        parent = self.roots["unified"] / PARENT
        files = {"memory": "memory.max", "pids": "pids.max"}
        return {c: parent / f for c, f in files.items() if c in self.controllers}

    def _mkdirs(self, name: str, needed: set[str]) -> Cgroup:
        cgroup = self.cgroup(name)
        if self.version == 1:
            for path in cgroup.dirs:
                path.mkdir(parents=True, exist_ok=True)
            self._bound_parent()
            return cgroup
        base = self.roots["unified"]
        parent = base / PARENT
        parent.mkdir(exist_ok=True)
        # A child only gets a controller that every ancestor enables for its subtree; enable
        # just what the limits need, so tracking still works where enabling is refused. The
        # parent's own limits need memory and pids enabled in its parent's subtree.
        bounded = {"memory", "pids"} & self.controllers
        levels = [(base, needed | bounded), (parent, needed)]
        for level, wanted in levels:
            if wanted and not wanted <= _words(level / "cgroup.subtree_control"):
                _write(level / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))
        self._bound_parent()
        cgroup.dirs[0].mkdir(exist_ok=True)
        return cgroup

    def _bound_parent(self) -> None:
        """Write the totals (:func:`.totals.totals`) into the parent's limits, unless this
        process wrote the same already (one look-up, not two writes, per sandbox)."""
        from hal9999.hostlimits import totals

        total = totals()
        values = {
            "memory": "max" if total.memory_mb is None else str(total.memory_mb << 20),
            "pids": "max" if total.pids is None else str(total.pids),
        }
        for controller, path in self.parent_files().items():
            value = values[controller]
            if self.version == 1 and controller == "memory" and value == "max":
                value = "-1"
            if _parent_written.get(path) != value:
                _write(path, value)
                _parent_written[path] = value


def detect(mountinfo: str | None = None) -> CgroupHost | None:
    """The best writable hierarchy here: the one offering memory and pids, v2 first."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    v1: dict[str, Path] = {}
    v2: list[Path] = []
    for line in mountinfo.splitlines():
        fields = line.split(" - ")
        if len(fields) != 2:
            continue
        mountpoint = Path(_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[0].split()[4]))
        fstype, _source, options = [*fields[1].split(), "", ""][:3]
        if fstype == "cgroup2":
            v2.append(mountpoint)
        elif fstype == "cgroup":
            for controller in set(options.split(",")) & set(V1_CONTROLLERS):
                v1.setdefault(controller, mountpoint)
    candidates: list[CgroupHost] = []
    for base in v2:
        if os.access(base, os.W_OK):
            offered = _words(base / "cgroup.controllers") & set(V1_CONTROLLERS)
            candidates.append(CgroupHost(2, {"unified": base}, frozenset(offered)))
    writable = {c: path for c, path in v1.items() if os.access(path, os.W_OK)}
    if writable:
        candidates.append(CgroupHost(1, writable, frozenset(writable)))
    for host in candidates:
        if {"memory", "pids"} <= host.controllers:
            return host
    return candidates[0] if candidates else None


def _unset_v1(
    memory: Path | None, pids: Path | None, cpu: Path | None, limits: CgroupLimits
) -> None:
    """Set the limits ``limits`` leaves unset back to unlimited (a reused cgroup keeps none)."""
    if memory is not None and limits.memory_bytes is None:
        # memory+swap may never be below memory: raise it first.
        for name in ("memory.memsw.limit_in_bytes", "memory.limit_in_bytes"):
            if (memory / name).exists():
                _write(memory / name, -1)
    if pids is not None and limits.pids is None:
        _write(pids / "pids.max", "max")
    if cpu is not None and limits.cpu_quota_us is None and (cpu / "cpu.cfs_quota_us").exists():
        _write(cpu / "cpu.cfs_quota_us", -1)


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def removed(exc: OSError) -> bool:
    """Whether ``exc`` says the cgroup went away under the call: its directory was gone at
    the open (ENOENT), or removed, by another process destroying the same sandbox, between
    the open and the read or write (ENODEV: what a removed cgroup's open file answers)."""
    return exc.errno in (errno.ENOENT, errno.ENODEV)


def _write(path: Path, value: object) -> None:
    # Control files take one value per write(2); buffering could split or merge them.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


def _read_counter(path: str, key: str) -> int:
    try:
        for line in read_all(path).decode().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return 0


async def _rmdir_retry(path: Path) -> None:
    # A just-killed process can keep the cgroup busy until the kernel has reaped it.
    deadline = time.monotonic() + RMDIR_DEADLINE
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise ProviderError(f"cannot remove cgroup {path}: {exc}") from exc
        await asyncio.sleep(0.02)
