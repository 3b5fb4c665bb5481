"""The default resource limits of a sandbox, and the totals of every sandbox on this host.

A :class:`Resources` field left unset gets the default below (a sandbox is never unlimited by
accident); ``0`` asks for no limit. The defaults bound what one runaway task can take from the
host, and what all of them can take together (:class:`Totals`: the cgroup holding every
sandbox of hal's has its own memory and pids limits), while leaving a normal build its room:

- ``pids`` the total's share of one of the tasks that may run at once (at most 4096, at least
  256): far above what a compiler or test runner forks, far below a fork bomb's need, and
  the sandboxes that may run at once cannot use up the host's pids together;
- ``memory_mb`` the total's share of one task (at most half the host's RAM, at least 512): as
  many tasks as may run at once, each at its limit, stay within the total, and the total
  leaves the host its reserve, so no set of tasks pushes the host into its OOM killer;
- ``cpus`` every core: no slowdown, but a quota the task cannot raise;
- ``disk_mb`` 20 GiB: workspace, home and scratch together, and no single file larger;
- ``disk_files`` 1 Mi files (names) in the same places: about the inodes 20 GiB brings on
  ext4 (one per 16 KiB), so one agent's empty files cannot use up the disk's inodes and stop
  every other task with ``disk_full`` (a checkout of a large monorepo is a few 100k).

The config's narrowing of an untrusted project file is judged against these defaults, and
the providers apply them (:mod:`hal9999.providers.limits`): both read them here.
"""

import os
from functools import cache
from typing import NamedTuple

from hal9999.spec import Resources

MIN_DEFAULT_MEMORY_MB = 512
MIN_DEFAULT_PIDS = 256
TOTAL_MEMORY_SHARE = 0.75
TOTAL_MEMORY_RESERVE_MB = 1024
"""Every sandbox together may use 75 % of the host's RAM less 1 GiB by default: the host, hal
and the page cache keep the rest."""
TOTAL_PIDS_SHARE = 0.75
"""Every sandbox together may use 75 % of the host's pids (``pid_max``, or ``threads-max``
when lower: a thread takes one too) by default."""
DEFAULT_CONCURRENT = 8
"""Tasks that may run at once when no setting says (``[scheduler] max_concurrent``)."""


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


@cache
def host_pids_max() -> int | None:
    """The most processes and threads the host's kernel allows at once (None when /proc
    cannot tell)."""
    found = []
    for name in ("pid_max", "threads-max"):
        try:
            with open(f"/proc/sys/kernel/{name}", encoding="ascii") as value:
                found.append(int(value.read().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return min(found) if found else None


class Totals(NamedTuple):
    """What every sandbox of hal's on this host may use together (None: no bound), and how
    many tasks may run at once, which share it."""

    memory_mb: int | None
    pids: int | None
    concurrent: int = DEFAULT_CONCURRENT

    @classmethod
    def of(cls, memory_mb: int | None, pids: int | None, concurrent: int) -> "Totals":
        """The totals a config asks for (unset: the host's defaults; ``0``: no bound),
        refused in one line when one exceeds the host."""
        from hal9999.errors import ConfigError

        host_memory, host_pids = host_memory_mb(), host_pids_max()
        if memory_mb and host_memory is not None and memory_mb > host_memory:
            raise ConfigError(
                f"[totals] memory_mb = {memory_mb} is more than this host's RAM "
                f"({host_memory} MiB)",
                hint="lower it (HAL_TOTAL_MEMORY_MB), leave it unset for "
                f"{_total_memory(host_memory)} MiB, or 0 for no bound",
            )
        if pids and host_pids is not None and pids > host_pids:
            raise ConfigError(
                f"[totals] pids = {pids} is more than this host allows ({host_pids}: "
                "kernel.pid_max or threads-max)",
                hint=f"lower it (HAL_TOTAL_PIDS), leave it unset for {_total_pids(host_pids)}, "
                "or 0 for no bound",
            )
        default = default_totals()
        return cls(
            default.memory_mb if memory_mb is None else memory_mb or None,
            default.pids if pids is None else pids or None,
            max(1, concurrent),
        )


def _total_memory(host: int) -> int:
    return max(MIN_DEFAULT_MEMORY_MB, int(host * TOTAL_MEMORY_SHARE) - TOTAL_MEMORY_RESERVE_MB)


def _total_pids(host: int) -> int:
    return max(MIN_DEFAULT_PIDS, int(host * TOTAL_PIDS_SHARE))


def default_totals() -> Totals:
    """The totals of this host when no setting says."""
    memory, pids = host_memory_mb(), host_pids_max()
    return Totals(
        None if memory is None else _total_memory(memory),
        None if pids is None else _total_pids(pids),
    )


_totals: Totals | None = None


def totals() -> Totals:
    """The totals this process uses: the config's (:func:`use_totals`), else the host's."""
    return _totals if _totals is not None else default_totals()


def use_totals(chosen: Totals | None) -> None:
    """Use ``chosen`` in this process, None: the host's (the task layer sets the config's as
    it loads a provider; the defaults of :func:`defaults` and the cgroup of every sandbox
    follow it)."""
    global _totals
    _totals = chosen


DEFAULT_PIDS = 4096
"""The most pids a sandbox gets by default (less when the total's share is less)."""
DEFAULT_MEMORY_SHARE = 0.5
"""Share of the host's RAM a sandbox may use by default, at most."""
DEFAULT_DISK_MB = 20 << 10
DEFAULT_DISK_FILES = 1 << 20


def host_cpus() -> float:
    """The cores this process may run on (read each time: ``taskset`` or a cgroup's cpuset
    can change them while hal runs)."""
    return float(len(os.sched_getaffinity(0)) or 1)


def defaults(cpus: float | None = None) -> Resources:
    """The limits a sandbox gets for every field its spec leaves unset (``cpus``: the host's
    cores as the caller read them, else read here)."""
    memory = host_memory_mb()
    total = totals()
    share = None if memory is None else int(memory * DEFAULT_MEMORY_SHARE)
    if total.memory_mb is not None:
        share = min(share or total.memory_mb, total.memory_mb // total.concurrent)
    pids = DEFAULT_PIDS
    if total.pids is not None:
        pids = max(MIN_DEFAULT_PIDS, min(pids, total.pids // total.concurrent))
    return Resources(
        cpus=host_cpus() if cpus is None else cpus,
        memory_mb=None if share is None else max(MIN_DEFAULT_MEMORY_MB, share),
        pids=pids,
        disk_mb=DEFAULT_DISK_MB,
        disk_files=DEFAULT_DISK_FILES,
    )


def effective(resources: Resources, cpus: float | None = None) -> Resources:
    """``resources`` with unset fields defaulted and ``0`` turned into ``None`` (no limit)."""
    base = defaults(cpus)
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
