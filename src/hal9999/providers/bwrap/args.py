"""The argv of a bwrap sandbox's commands: namespaces, the read-only system, the sandbox's mounts.

Pure functions of a sandbox's record and directory (and the host's ``/`` layout), used by
:class:`bwrap.BwrapSandbox` to build each command's bubblewrap options and its keeper's.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from hal9999.providers.bwrap import usernet
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host import user as sandboxuser
from hal9999.providers.host.sandbox import SandboxRecord

WORKDIR = "/workspace"
"""The workspace inside, and every command's default working directory."""
HOME = "/home/hal"
"""The sandbox user's home inside."""
MERGED_USR = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
ETC_VIEW = "\0etc-view"
"""Stands for the current :class:`.etc.EtcView` in a handle's argv until each exec."""
ROOTFS_SKIP = frozenset({"proc", "dev", "sys", "tmp", "run", "home", "workspace"})
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs", "acpi")
"""Host-wide writers under /proc: read-only inside whatever the sandbox's uid (as Docker)."""
PROC_COVERED_AS_ROOT = ("sysrq-trigger", "irq", "bus")
"""What bwrap binds read-only over its own /proc when it can write them, i.e. run as real
root (``--proc``: it covers ``sys`` too, but never can, as the kernel refuses write access
to ``/proc/sys`` itself even to root): a bind of ours would be a second mount on each."""
DROP_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
"""What setpriv needs to switch uid and empty the bounding set; gone once it has."""
ACCOUNT_FDS = {"passwd": 4, "group": 8}
"""The fds bwrap reads a root hal's sandbox's own ``passwd`` and ``group`` from (``--file``),
pipes the launcher fills (``hostexec.data_args``): free on every path to bwrap (usernet's
wiring holds 5 to 7, a keeper's start 3, the filter 9)."""


@functools.lru_cache(maxsize=8)
def system_args(rootfs: Path | None, ro_paths: tuple[Path, ...]) -> tuple[str, ...]:
    """The read-only system part: host /usr and the curated /etc (:data:`ETC_VIEW`, see
    :mod:`.etc`), or the whole of ``rootfs``."""
    args: list[str] = []
    if rootfs is None:
        args += ["--ro-bind", "/usr", "/usr"]
        for name in MERGED_USR:
            host = Path("/", name)
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                args += ["--ro-bind", str(host), str(host)]
        args += ["--ro-bind", ETC_VIEW, "/etc"]
        # /var/tmp is where some tools put bigger temp files; share /tmp's directory.
        args += ["--dir", "/var", "--symlink", "../tmp", "/var/tmp"]
    else:
        for entry in sorted(os.scandir(rootfs), key=lambda e: e.name):
            if entry.name in ROOTFS_SKIP:
                continue
            if entry.is_symlink():
                args += ["--symlink", os.readlink(entry.path), f"/{entry.name}"]
            else:
                args += ["--ro-bind", entry.path, f"/{entry.name}"]
    for path in ro_paths:
        args += ["--ro-bind-try", str(path), str(path)]
    return tuple(args)


_BINDS = frozenset({"--bind", "--ro-bind", "--ro-bind-try", "--dev-bind"})


def with_parents(args: list[str]) -> list[str]:
    """``args`` with a ``--dir`` (mode 0755) before each bind whose parents do not exist yet.

    bwrap makes missing parents of a bind target itself, but running as root it makes
    them mode 0700, which the sandbox's own uid could not enter (``/etc``, ``/home``).
    """
    return list(_with_parents(tuple(args)))


@functools.lru_cache(maxsize=64)
def _with_parents(args: tuple[str, ...]) -> tuple[str, ...]:
    # The same sandbox gets the same args on every claim, start and reset: worked out once.
    out: list[str] = []
    made: set[str] = {"/"}
    bound: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in _BINDS or arg == "--symlink":
            target = args[index + 2]
            for parent in _parents(target):
                if parent in made:
                    continue
                if not any(parent == b or parent.startswith(b + "/") for b in bound):
                    out += ["--dir", parent]
                    made.add(parent)
            bound.append(target)
            out += args[index : index + 3]
            index += 3
            continue
        if arg in ("--dir", "--proc", "--dev", "--tmpfs"):
            made.add(args[index + 1])
        out.append(arg)
        index += 1
    return tuple(out)


def _parents(target: str) -> list[str]:
    """The parents of ``target``, outermost first (``/`` included), as ``Path.parents`` says;
    by string for the absolute, normal paths hal builds (every handle runs this)."""
    if not target.startswith("/") or "//" in target or "/." in target or target.endswith("/"):
        return [str(p) for p in reversed(Path(target).parents)]
    cuts = [i for i, char in enumerate(target) if char == "/"]
    return ["/", *(target[:i] for i in cuts[1:])]


def namespace_args(
    uid: int | None,
    *,
    seccomp_fd: bool,
    shared_net: bool,
    usernet_wired: bool,
    die_with_parent: bool,
    user_ids: tuple[int, int] | None = None,
) -> list[str]:
    """Namespaces, capabilities and the seccomp filter (from the launcher's fd, with
    ``seccomp_fd``) of a sandbox whose own host ``uid`` is given when bwrap runs as root;
    ``die_with_parent`` for a command, not for a keeper, which outlives the launcher that
    starts it (:mod:`.keeper`). ``user_ids``: the uid and gid of the user bwrap runs as (this
    process's by default; an ssh host's login user there).

    Run by an ordinary user, bwrap makes a user namespace mapping that user, and nested ones
    are disabled. Run by root, a user namespace would map the sandbox to host uid 0 (which
    the kernel's sysctl and keyring checks treat as root), so bwrap makes none: it sets up
    the mounts as root and the command drops to the sandbox's own uid (see
    :func:`hal9999.providers.host.user.drop_privileges`); the filter then refuses nested user
    namespaces. The network namespace is the host's only with ``shared_net``; ``host`` mode
    otherwise has its own, wired by :mod:`.usernet` when ``usernet_wired`` (its launcher runs
    first).
    """
    network = shared_net
    if uid is None:
        args = ["--unshare-all", "--unshare-user", "--disable-userns"]
        if usernet_wired:
            # Inside the namespaces usernet's `unshare` made: its network, and the user's
            # own ids (there, bwrap's own uid is 0).
            network = True
            ids = user_ids or (os.getuid(), os.getgid())
            args += ["--uid", str(ids[0]), "--gid", str(ids[1])]
        args += ["--share-net"] if network else []
        args += ["--cap-drop", "ALL"]
    else:
        args = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        args += [] if network else ["--unshare-net"]
        # Only what the drop to the sandbox's uid needs (see DROP_CAPS).
        args += ["--cap-drop", "ALL"]
        args += [arg for cap in DROP_CAPS for arg in ("--cap-add", cap)]
    if die_with_parent:
        args.append("--die-with-parent")
    if seccomp_fd:
        args += ["--seccomp", str(hostexec.SECCOMP_FD)]
    if usernet_wired:
        args += usernet.bwrap_args()
    return args


def mount_args(
    record: SandboxRecord,
    mounts: list[hostfs.Mount],
    shared: Path,
    *,
    helper: Path | None,
    ro_paths: tuple[Path, ...],
    shared_net: bool,
) -> list[str]:
    """Everything a command sees, as bwrap options: the read-only system, our own account
    files (from :func:`account_data`'s fds, the uid switch ``helper`` and usernet's
    ``resolv.conf``, both in the provider's ``shared`` files), ``/proc`` and ``/dev``, the
    sandbox's ``mounts`` (:func:`sandbox_mounts`), its hostname and a read-only root. Missing
    parents are not made here (:func:`with_parents`)."""
    spec = record.spec
    args = list(system_args(spec.rootfs, ro_paths))
    if spec.network == "host" and not shared_net and spec.rootfs is None:
        # The host's resolver may live on its loopback, out of reach: slirp's forwarder.
        args += ["--ro-bind", str(shared / "resolv.conf"), "/etc/resolv.conf"]
    if record.uid is not None and spec.rootfs is None:
        # Our own account files (the sandbox user has a name, the host's users stay hidden;
        # the /etc view links to them), written by bwrap into its own root, which is
        # read-only from the command's start: no file on the host per sandbox.
        args += ["--dir", sandboxuser.OWN_DIR]
        for name, fd in ACCOUNT_FDS.items():
            args += ["--perms", "0644", "--file", str(fd), f"{sandboxuser.OWN_DIR}/{name}"]
        if helper is not None:
            args += ["--ro-bind", str(helper), sandboxuser.DROP_HELPER]
    if record.uid is not None and spec.rootfs is not None:
        args += ["--ro-bind", "/usr", sandboxuser.HOST_USR]
    args += proc_args(as_root=record.uid is not None)
    for mount in mounts:
        args += ["--bind" if mount.writable else "--ro-bind", str(mount.source), mount.target]
    # Nothing may be left behind in the root tmpfs: every exec gets a fresh one.
    args += ["--hostname", f"hal-{record.id}", "--remount-ro", "/"]
    return args


def proc_args(*, as_root: bool) -> list[str]:
    """``/proc`` and ``/dev`` of the sandbox's own, the host-wide writers under ``/proc``
    read-only (:data:`PROC_READ_ONLY`; those bwrap covers itself when ``as_root``)."""
    args = ["--proc", "/proc", "--dev", "/dev"]
    covered = PROC_COVERED_AS_ROOT if as_root else ()
    for name in PROC_READ_ONLY:
        if name not in covered:
            args += ["--ro-bind-try", f"/proc/{name}", f"/proc/{name}"]
    return args


def account_data(record: SandboxRecord) -> list[tuple[int, str]]:
    """``(fd, text)`` of the account files :func:`mount_args` has bwrap read, for the
    launcher to put on those fds (none where the sandbox shows the host's or a rootfs's)."""
    if record.uid is None or record.spec.rootfs is not None:
        return []
    texts = sandboxuser.accounts(record.uid, record.uid)
    return [(fd, texts[name]) for name, fd in ACCOUNT_FDS.items()]


def sandbox_mounts(record: SandboxRecord, directory: Path) -> list[hostfs.Mount]:
    """The workspace, home, tmp and the spec's binds of the sandbox whose directory is
    ``directory``, parents before children (a bind inside the workspace would otherwise be
    hidden by it)."""
    spec = record.spec
    # Keyed by target: a later bind of the same target wins, in bwrap as in the PathMap.
    binds = {
        hostfs.normalize(b.target, "/"): hostfs.Mount(
            hostfs.normalize(b.target, "/"), b.source, not b.read_only
        )
        for b in spec.binds
    }
    # The sandbox's own dirs, unless a bind takes their place (e.g. a session's home).
    own = [
        hostfs.Mount(target, source, writable=True)
        for target, source in (
            (WORKDIR, spec.workspace or directory / "workspace"),
            (HOME, directory / "home"),
            ("/tmp", directory / "tmp"),
        )
        if target not in binds
    ]
    return sorted([*own, *binds.values()], key=lambda m: m.target.count("/"))
