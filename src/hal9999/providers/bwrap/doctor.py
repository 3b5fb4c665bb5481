"""What ``hal doctor`` says of the ``bwrap`` provider: bubblewrap and whether its namespaces
work here, who sandbox processes run as, what the seccomp filter covers, what each network
mode exposes (docs/security.md), and the control groups that enforce limits."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from hal9999.errors import HalError
from hal9999.providers.doctor import Check, DoctorScope

_CGROUP = Path("/sys/fs/cgroup")
FAVOR_V2 = "mount -o remount,favordynmods /sys/fs/cgroup"


async def checks(scope: DoctorScope) -> list[Check]:
    """The ``bwrap`` lines of the report."""
    return [
        await scope.tool("bubblewrap", ["bwrap", "--version"], "apt-get install bubblewrap", True),
        await _bwrap_works(),
        *_boundary(),
        *_cgroup_checks(),
    ]


async def _bwrap_works() -> Check:
    if shutil.which("bwrap") is None:
        return Check("bwrap sandbox", False, "bubblewrap missing", "apt-get install bubblewrap")
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path("/", name).is_symlink():
            argv += ["--symlink", f"usr/{name}", f"/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", "true"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode == 0:
        return Check("bwrap sandbox", True, "namespaces work")
    return Check(
        "bwrap sandbox",
        False,
        err.decode(errors="replace").strip()[:200],
        "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
        "or run as root",
    )


def _boundary() -> list[Check]:
    """Who sandbox processes run as, what the seccomp filter covers, and what each network
    mode exposes (docs/security.md)."""
    from hal9999.providers.bwrap import seccomp, usernet
    from hal9999.providers.host import user as sandboxuser

    if sandboxuser.privileged():
        who = (
            "hal runs as root: each bwrap sandbox runs as a host uid of its own "
            f"({sandboxuser.UID_BASE}+), never root"
        )
    else:
        who = f"each bwrap sandbox runs as this user (uid {os.getuid()}) in a user namespace"
    checks = [Check("sandbox user", True, who)]
    covered = seccomp.supported()
    checks.append(
        Check(
            "seccomp filter",
            covered,
            "x86_64, i386 and x32 ABIs covered" if covered else "not on this CPU architecture",
            None if covered else "only x86_64 hosts get the filter; the rest of the boundary holds",
            required=False,
        )
    )
    checks.append(
        Check(
            "network none",
            True,
            "loopback only: no host or outside service; presets reach their API through the "
            "LLM gateway (the key stays on the host) and other hosts through the egress proxy "
            "([gateway] egress)",
        )
    )
    try:
        usernet.check(userns=not sandboxuser.privileged())
    except HalError as exc:
        checks.append(
            Check(
                "network host",
                False,
                f"unavailable: {exc.message}",
                f'{exc.hint}; or [providers.bwrap] host_network = "shared", which exposes '
                "every service on the host's loopback and its abstract unix sockets",
                required=False,
            )
        )
    else:
        checks.append(
            Check(
                "network host",
                True,
                "own namespace, outbound through slirp4netns; the host's loopback services, "
                "abstract unix sockets and other tasks are not reachable",
            )
        )
    return checks


def _cgroups() -> Check:
    fix = "run as root or delegate a cgroup to your user; without it, limits are not enforced"
    if (_CGROUP / "cgroup.controllers").exists():
        controllers = (_CGROUP / "cgroup.controllers").read_text().split()
        ok = os.access(_CGROUP, os.W_OK) and {"memory", "pids"} <= set(controllers)
        return Check("cgroups", ok, f"v2 ({' '.join(controllers)})", None if ok else fix, False)
    v1 = [c for c in ("memory", "pids", "cpu") if os.access(_CGROUP / c, os.W_OK)]
    ok = len(v1) == 3
    return Check(
        "cgroups", ok, f"v1 writable: {', '.join(v1) or 'none'}", None if ok else fix, False
    )


def cgroup_moves(mounts: str, *, v2: bool) -> Check:
    """Whether moving a process into a sandbox's cgroup (every bwrap command does) is quick.

    On cgroup v2, unless some hierarchy is mounted with ``favordynmods`` (Linux 6.0+), the
    kernel's lock for such moves waits for an RCU grace period whenever it has not been
    taken for a few milliseconds, which roughly doubles a sandbox command after an idle
    spell (docs/benchmarks.md). The option makes forks and exits a little dearer, so hal
    names it and leaves the choice to whoever runs the host. On v1 the launcher moves its
    one thread through ``tasks``, which takes no such lock
    (:meth:`hal9999.providers.host.cgroups.CgroupV1.join_files`)."""
    if not v2:
        return Check("cgroup moves", True, "v1: commands join through tasks, no wait", None, False)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            if "favordynmods" in fields[3].split(","):
                return Check("cgroup moves", True, f"favordynmods on {fields[1]}", None, False)
    return Check(
        "cgroup moves",
        False,
        "each sandbox command after an idle spell waits ~8 ms for the kernel (an RCU grace "
        "period to move it into its cgroup)",
        FAVOR_V2 + " (Linux 6.0+; forks and exits get a little dearer)",
        False,
    )


def _cgroup_checks() -> list[Check]:
    found = _cgroups()
    if not found.ok:  # hal moves nothing into cgroups here
        return [found]
    return [found, _cgroup_moves()]


def _cgroup_moves() -> Check:
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError as exc:
        return Check("cgroup moves", False, f"cannot read /proc/self/mounts: {exc}", None, False)
    return cgroup_moves(mounts, v2=(_CGROUP / "cgroup.controllers").exists())
