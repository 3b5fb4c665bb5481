"""A pooled bwrap sandbox's keeper: its namespaces, set up once, entered by every command.

A bwrap command costs a fresh set of namespaces and every mount of the sandbox (~14 binds,
each followed by a walk of the mount table): about 1.6x a bare ``bwrap true``. While a root
hal's sandbox waits in the pool, hal starts its *keeper*: the same bwrap sandbox (but for
its ``/proc``, :func:`without_proc`) running nothing but ``sleep``, or the uid switch
waiting itself (as the sandbox's uid, marked as the sandbox's, outside its cgroup).
Each command then enters the keeper's mount, network, IPC and UTS namespaces through the
static launcher (``hal-launch --enter``, scripts/hal-launch.c) and still gets what bwrap
gives it: a PID namespace of its own, its own copy of the mounts with a fresh ``/proc``, a
cgroup namespace rooted at the sandbox's cgroups, a new session, the bounding set cut,
no_new_privs, the seccomp filter and the uid switch.

The keeper's mounts were bound when it started; a command's mounts are the sandbox's mounts
*now* (a claim points the pool slot at the next task's session, the ``/etc`` view follows the
host). So before each command :func:`stale_mounts` compares each bind's source on the host
with what the keeper has at its target (through ``/proc/PID/root``, two ``stat`` calls), and
the launcher attaches those that differ in the keeper's own mount namespace (``open_tree``
on the host, ``move_mount`` inside): a task's first command attaches its session, the later
ones find it there.

The keeper is found by its record (:data:`KEEPER_FILE`): its host pid and the inode of its
mount namespace, which the launcher checks again, so a dead keeper whose pid was reused is
never entered. A dead or missing keeper means plain bwrap for each command, also when it
dies after hal read it: the launcher then runs the command's bwrap argv (``--else``). A reset kills
it and starts a fresh one (nothing of a task's namespaces is left for the next), a stop kills
it with the rest of the sandbox's marked processes, destroy kills it.
"""

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from hal9999.errors import ProviderError
from hal9999.hostread import read_all
from hal9999.procs import kill_pinned, run_captured
from hal9999.providers.host import exec as hostexec

MARKER_VAR = "HAL_KEEPER"
"""In a keeper's environment: the sandbox's host directory (not ``HAL_SANDBOX``: it is hal's
process, not the sandbox's; stop and reset leave it to :func:`stop`). A keeper whose
directory is gone (removed without a destroy) is killed by :func:`sweep`."""
SWEEP_EVERY = 60.0
"""Seconds between two sweeps by one process (each reads every process's environment)."""
_swept = [0.0]
KEEPER_FILE = "keeper"
"""In the sandbox's host-only directory: ``PID MNT_INO``."""
MIN_KERNEL = (5, 12)
"""``mount_setattr``, which attaching needs."""


class Keeper(NamedTuple):
    """A live keeper: its host pid and its mount namespace's inode."""

    pid: int
    mnt_ino: int

    def alive(self) -> bool:
        """Whether the pid still holds that mount namespace."""
        try:
            return os.stat(f"/proc/{self.pid}/ns/mnt").st_ino == self.mnt_ino
        except OSError:
            return False


def kernel_ok(release: str | None = None) -> bool:
    """Whether the kernel has what attaching a mount into a keeper needs."""
    text = release if release is not None else os.uname().release
    try:
        major, minor = (int(part) for part in text.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= MIN_KERNEL


def read(directory: Path) -> Keeper | None:
    """The keeper recorded in the sandbox's directory, if it is alive."""
    try:
        pid, ino = (int(word) for word in read_all(str(directory / KEEPER_FILE)).split())
    except (OSError, ValueError):
        return None
    keeper = Keeper(pid, ino)
    return keeper if keeper.alive() else None


def binds(argv: Sequence[str]) -> list[tuple[str, str, bool]] | None:
    """``(source, target, read_only)`` of each bind in a bwrap argv (up to ``--``) that a
    keeper must have as the command would: all but ``/proc``'s (each command mounts its own
    /proc) and ``/usr``. None for an argv with an option this does not know: such a command
    runs under bwrap itself."""
    options = _options(argv)
    if options is None:
        return None
    out: list[tuple[str, str, bool]] = []
    for option in options:
        if option[0] in _BINDS:
            arg, source, target = option
            if not target.startswith("/proc/") and target != "/usr":
                if arg != "--ro-bind-try" or os.path.exists(source):
                    out.append((source, target, arg != "--bind"))
    return out


def without_proc(args: Sequence[str]) -> list[str]:
    """``args`` (a root hal's bwrap options) with ``/proc`` left an empty directory: no
    ``--proc``, no bind under ``/proc``. A keeper's ``/proc`` is never seen by a command,
    which mounts a fresh one over it (its host-wide writers bound read-only) before anything
    of the sandbox runs, and what waits in the keeper reads nothing there; each of those
    binds costs bwrap a mount, a remount and a read of the whole mount table. ``args``
    unchanged if it holds an option :func:`binds` does not know."""
    options = _options(args)
    if options is None or sum(map(len, options)) != len(args):
        return list(args)
    out: list[str] = []
    for option in options:
        if option[0] == "--proc":
            out += ["--dir", option[1]]
        elif not (option[0] in _BINDS and option[2].startswith("/proc/")):
            out += option
    return out


def _options(argv: Sequence[str]) -> list[Sequence[str]] | None:
    """The options of a bwrap argv up to ``--``, each with its values; None for an argv with
    an option this module does not know."""
    out: list[Sequence[str]] = []
    index = 0
    while index < len(argv) and argv[index] != "--":
        arg = argv[index]
        if arg in _TWO_VALUES:
            width = 3
        elif arg in _ONE_VALUE:
            width = 2
        elif arg in _NO_VALUE:
            width = 1
        else:
            return None
        out.append(argv[index : index + width])
        index += width
    return out


_NO_VALUE = frozenset({
    "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
    "--unshare-net", "--die-with-parent",
})  # fmt: skip
_ONE_VALUE = frozenset({
    "--cap-drop", "--cap-add", "--seccomp", "--dir", "--proc", "--dev", "--hostname",
    "--remount-ro", "--unsetenv", "--chdir", "--perms",
})  # fmt: skip
_BINDS = frozenset({"--bind", "--ro-bind", "--ro-bind-try"})
_TWO_VALUES = _BINDS | {"--symlink", "--file"}
"""The options of a root hal's bwrap commands (providers/bwrap/provider.py)."""


def stale_mounts(keeper: Keeper, wanted: Sequence[tuple[str, str, bool]]) -> list[str] | None:
    """``--attach`` options for each bind of ``wanted`` the keeper does not have as wanted
    (its target shows another directory than the source does now), and for every bind under
    one of those (attaching a target detaches what was mounted below it). None when a bind
    to attach lies inside another bind whose source has no mount point for it (bwrap makes
    one there; the launcher does not): that command runs under bwrap itself."""
    root = f"/proc/{keeper.pid}/root"
    out: list[str] = []
    attached: list[str] = []
    for source, target, read_only in wanted:
        under = any(target.startswith(t.rstrip("/") + "/") for t in attached)
        if not under:
            try:
                have, want = os.stat(root + target), os.stat(source)
                if (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino):
                    continue
            except OSError:
                pass
        if not _has_mount_point(target, wanted):
            return None
        attached.append(target)
        out += ["--attach", source, target, "1" if read_only else "0"]
    return out


def _has_mount_point(target: str, wanted: Sequence[tuple[str, str, bool]]) -> bool:
    """Whether ``target`` exists in the source of the deepest other bind it lies in (a
    top-level target is on the keeper's own root, made when it started)."""
    parents = [
        (t, s) for s, t, _ in wanted if t != target and target.startswith(t.rstrip("/") + "/")
    ]
    if not parents:
        return True
    parent, parent_source = max(parents, key=lambda pair: len(pair[0]))
    return os.path.lexists(parent_source + target[len(parent.rstrip("/")) :])


async def start(
    helper: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    directory: Path,
    *,
    data: Sequence[tuple[int, str]] = (),
) -> Keeper:
    """Start a keeper with ``argv`` (bwrap ... ``--info-fd 3`` ... ``sleep``) by the static
    launcher (``hal-launch --keep``), which detaches it and records it; the keeper. ``data``:
    what bwrap reads from the launcher's pipes (``hostexec.data_args``)."""
    record = directory / KEEPER_FILE
    options = hostexec.data_args(data)
    # --parent: no keeper for a hal that died while this launcher was in flight.
    keep = hostexec.parented([helper, *options, "--keep", str(record), "--", *argv])
    # Not through asyncio's transports (less of the daemon's CPU a start).
    # Its stdout is /dev/null: the keeper keeps it (its stderr goes to KEEPER_FILE.err).
    launch = asyncio.ensure_future(run_captured(keep, cwd=Path("/"), env=env, discard_stdout=True))
    try:
        returncode, _, err = await asyncio.shield(launch)
    except asyncio.CancelledError:
        # A cancelled start lets the launcher end (milliseconds; its own deadline bounds it):
        # killed mid-start, it could leave a keeper forked but not yet recorded, which a
        # destroy's marker scan may miss while it is still starting (an exec in flight
        # reads as an empty environment). Ended, its keeper is recorded, or none was made.
        await asyncio.wait({launch})
        raise
    keeper = read(directory) if returncode == 0 else None
    if keeper is None:
        said = err.decode(errors="replace").strip()
        with contextlib.suppress(OSError):
            said += " " + (directory / f"{KEEPER_FILE}.err").read_text(errors="replace").strip()
        raise ProviderError(f"the sandbox's keeper did not start: {said.strip()[:300]}")
    return keeper


def sweep_due(now: float | None = None) -> bool:
    """Whether :func:`sweep` would scan now (else it returns at once: no thread for it)."""
    return (time.monotonic() if now is None else now) - _swept[0] >= SWEEP_EVERY


def sweep(*, now: float | None = None) -> int:
    """Kill keepers whose sandbox directory is gone (a ``HAL_HOME`` removed by hand, a test's
    temporary one), at most every :data:`SWEEP_EVERY` seconds; how many.

    Any process may carry the marker, an agent's too, naming any path. Only hal's own
    processes are judged: a keeper's bwrap (outside and PID 1 inside, whose death ends its
    namespace) runs as hal's uid, an agent's commands never do, so no path an agent names is
    looked up by the host. Each is signalled through a pidfd once its owner and marker are
    read again, so a pid reused since the scan is left alone."""
    now = time.monotonic() if now is None else now
    if not sweep_due(now):
        return 0
    _swept[0] = now
    ours = os.geteuid()
    doomed: dict[int, bytes] = {}  # a pid once, however many entries name a gone directory
    for pid, value in hostexec.environ_values(MARKER_VAR):
        directory = os.fsdecode(value)
        if pid in doomed or not directory.startswith("/") or _owner(pid) != ours:
            continue
        if not os.path.isdir(directory):
            doomed[pid] = value
    return sum(kill_pinned(pid, _still(pid, value, ours)) for pid, value in doomed.items())


def _owner(pid: int) -> int | None:
    """The process's real uid (not the owner of its ``/proc/PID`` files: a process that
    makes itself undumpable shows as root's there)."""
    try:
        status = read_all(f"/proc/{pid}/status")
        return int(status.split(b"\nUid:", 1)[1].split(None, 1)[0])
    except (OSError, IndexError, ValueError):
        return None


def _still(pid: int, value: bytes, uid: int) -> Callable[[], bool]:
    """Whether ``pid`` is still ``uid``'s and still carries the marker with ``value``."""
    entry = f"{MARKER_VAR}=".encode() + value
    return lambda: _owner(pid) == uid and entry in read_all(f"/proc/{pid}/environ").split(b"\0")


def stop(directory: Path) -> bool:
    """Kill the sandbox's keeper (if alive: a reused pid is left alone) and forget it;
    whether there was a record of one."""
    path = directory / KEEPER_FILE
    try:
        pid, ino = (int(word) for word in read_all(str(path)).split())
    except (OSError, ValueError):
        return False
    kill_pinned(pid, Keeper(pid, ino).alive)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True
