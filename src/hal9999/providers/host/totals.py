"""What every sandbox of hal's on this host may use together, and the host facts it is
drawn from: the cgroup holding every sandbox carries these totals as its limits
(:mod:`hal9999.providers.host.cgroups`), and each sandbox's default limits are the totals' share
of one of the tasks that may run at once (:func:`hal9999.providers.limits.defaults`)."""

from functools import cache
from typing import NamedTuple

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
