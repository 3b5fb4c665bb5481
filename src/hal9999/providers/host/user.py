"""The host user a sandbox's processes run as, and handing files over to it.

When ``hal`` runs as root, a sandbox must not run as root: the kernel checks ``/proc/sys``,
keyrings and other host-wide objects by uid, not by capability, so a sandbox process with
host uid 0 could rewrite ``kernel.core_pattern`` and have the host run its program as root.
Each sandbox therefore gets a host uid of its own from a reserved range (one uid per sandbox,
so two sandboxes never share files or signals), recorded in ``sandbox.json``; the files the
agent may write (its workspace, home and tmp) are handed to that uid with :func:`adopt`.
When ``hal`` runs as an ordinary user, sandboxes run as that user and nothing here applies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hal9999 import fs
from hal9999.errors import ProviderError

SETPRIV = "/usr/bin/setpriv"
OWN_DIR = "/.hal"
"""Where a root hal's sandbox sees its own account files and the uid switch: a directory of
bwrap's own root (a tmpfs, read-only), not a host directory."""
DROP_HELPER = f"{OWN_DIR}/hal-drop"
"""Where a sandbox sees :func:`drop_helper`'s program (see :func:`install_helper`)."""
DROP_HELPER_BUILT = Path(__file__).resolve().parents[4] / "build" / "hal-drop"
"""Where ``scripts/setup.sh`` builds it in a source checkout (``scripts/hal-drop.c``)."""
HOST_USR = "/.hal-host/usr"
"""Where a custom rootfs sees the host's /usr, for the host's setpriv (a root hal only)."""
UID_BASE = 2_000_000_000
"""First uid of the reserved range: far above login users, subuid ranges and nobody."""
UID_SLOTS = 1 << 24
"""How many uids the range holds."""
LOCK_DIR = Path("/run/hal9999/uids")
"""Host-wide, so that two ``HAL_HOME``s on one host never hand out the same uid."""


def privileged() -> bool:
    """Whether sandboxes need a uid of their own (``hal`` runs as root)."""
    return os.geteuid() == 0


def allocate(owner: str) -> int:
    """A uid no live sandbox on this host has; ``owner`` is noted in its lock file.

    The lock file appears whole: written under a name of the owner's (:func:`_draft`), then
    hard-linked to the uid's name, which fails when the uid is taken. A hal killed between
    creating the lock and writing its owner left an empty one, a uid nobody could ever
    find; now a kill leaves at most the draft, which :func:`held_by` (its owner's) or
    :func:`sweep_drafts` (a dead writer's, named in it) removes.
    """
    LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    started = _started(pid)  # None without a readable /proc: then the name has no writer
    writer = f"{pid}.{started}-" if started else ""  # (was "pid.None", swept while it lived)
    draft = LOCK_DIR / f"{_draft(owner)}{writer}{secrets.token_hex(4)}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(owner + "\n")
        for _ in range(64):
            uid = UID_BASE + secrets.randbelow(UID_SLOTS)
            try:
                os.link(draft, LOCK_DIR / str(uid))
            except FileExistsError:
                continue
            return uid
    finally:
        draft.unlink()
    raise ProviderError(f"no free sandbox uid in {LOCK_DIR} after 64 tries")


def held_by(owner: str) -> list[int]:
    """The uids whose lock files name ``owner``: what a hal killed inside :func:`allocate`'s
    caller, before it noted the uid anywhere, left (reads every lock file: for that case
    only). ``owner``'s drafts go; so does an empty lock file, which only a kill inside an
    older hal's allocate left, once it is :data:`EMPTY_STALE_S` old."""
    found = []
    draft = _draft(owner)
    with contextlib.suppress(FileNotFoundError), os.scandir(LOCK_DIR) as entries:
        for entry in entries:
            with contextlib.suppress(OSError, ValueError):
                if entry.name.startswith(draft):
                    os.unlink(entry.path)
                    continue
                text = Path(entry.path).read_text()
                if text == owner + "\n":
                    found.append(int(entry.name))
                elif not text and time.time() - entry.stat().st_mtime > EMPTY_STALE_S:
                    release(int(entry.name))
    return found


EMPTY_STALE_S = 3600
"""Age past which an empty uid lock file (written by no hal now) is given back."""


def _draft(owner: str) -> str:
    """The start of the name of ``owner``'s lock file while :func:`allocate` writes it."""
    return f"{_DRAFT}{hashlib.sha256(owner.encode()).hexdigest()[:16]}-"


_DRAFT = ".draft-"


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot), None when it is gone or a
    zombie: with the pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def sweep_drafts() -> int:
    """Remove the drafts (any owner's) whose writer, named in the draft, is dead; how many.

    :func:`held_by` removes only its owner's drafts, and only docker calls it: a bwrap or
    qemu hal killed inside :func:`allocate` left its draft until reboot. This lists the
    directory, so it runs where a scan is paid once (the daemon's start), never per sandbox.
    A draft of an older hal, without its writer in the name, goes once
    :data:`EMPTY_STALE_S` old, as does every draft on a host where this process cannot read
    its own start in ``/proc`` (no writer can be told alive there).
    """
    removed = 0
    proc = _started(os.getpid()) is not None
    with contextlib.suppress(OSError), os.scandir(LOCK_DIR) as entries:
        for entry in entries:
            if not entry.name.startswith(_DRAFT):
                continue
            writer = entry.name[len(_DRAFT) + 17 :].split("-", 1)[0]
            pid, _, started = writer.partition(".")
            with contextlib.suppress(OSError):
                if proc and pid.isdigit() and started:
                    if _started(int(pid)) == started:
                        continue  # its writer is alive: an allocate under way
                elif time.time() - entry.stat().st_mtime <= EMPTY_STALE_S:
                    continue
                os.unlink(entry.path)
                removed += 1
    return removed


def release(uid: int) -> None:
    """Give ``uid`` back to the range (idempotent)."""
    if UID_BASE <= uid < UID_BASE + UID_SLOTS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(LOCK_DIR / str(uid))


def adoption(roots: Sequence[Path], uid: int | None) -> Callable[[], None] | None:
    """:func:`adopt_each` of ``roots`` as a step to make later (None: nothing to adopt)."""
    if uid is None or not roots:
        return None
    return lambda: adopt_each(roots, uid)


def adopt_each(roots: Sequence[Path], uid: int) -> None:
    """:func:`adopt` of each root in turn."""
    for root in roots:
        adopt(root, uid)


def adopt(root: Path, uid: int) -> None:
    """Make ``root`` and everything below it owned by ``uid`` (group too), never following
    a symlink.

    The tree may hold what an agent planted, so the walk is by directory fd (each directory
    entered with ``O_NOFOLLOW``) and every change is an ``fchownat(AT_SYMLINK_NOFOLLOW)``: a
    link swapped in mid-walk changes the link, never its target. A regular file with other
    hard links is left alone, since its other names may be outside the tree. ``root`` itself
    is a mount source named by hal (possibly a pool slot's link to a session directory), so
    it is opened through its links (by the kernel, in one call: ``realpath``'s
    ``lstat`` of every component was most of a task's walk). Any depth (an agent's
    1,500-level home, which ``os.fwalk``'s frame and fd a level crashed on): one directory is
    open at a time and the walk climbs back by ``..``; it ends where ``..`` is not the
    directory it came down from (the tree was moved meanwhile, and what is left of it is the
    agent's).
    """
    try:
        fd = os.open(root, _DIR & ~os.O_NOFOLLOW)
    except NotADirectoryError:
        resolved = Path(os.path.realpath(root))
        _own(resolved, None, uid)  # as a root that is no directory always was, then refused
        os.close(os.open(resolved, _DIR))
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != uid or info.st_gid != uid:
            os.fchown(fd, uid, uid)
        path = [(info.st_dev, info.st_ino)]  # the directories from root down to fd
        todo = [_own_entries(fd, uid)]  # and the subdirectories each has left to enter
        while todo:
            if todo[-1]:
                try:
                    child = os.open(todo[-1].pop(), _DIR, dir_fd=fd)
                except OSError:  # gone, or no directory now (a link swapped in)
                    continue
                os.close(fd)
                fd = child
                path.append(_same(fd))
                todo.append(_own_entries(fd, uid))
                continue
            todo.pop()
            path.pop()
            if not todo:
                return
            parent = os.open("..", _DIR, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _same(fd) != path[-1]:
                return
    finally:
        os.close(fd)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _same(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _own_entries(dirfd: int, uid: int) -> list[str]:
    """Hand over every entry of the directory at ``dirfd``; the names of its subdirectories."""
    subdirs: list[str] = []
    with os.scandir(dirfd) as entries:
        for entry in entries:
            _own(entry.name, dirfd, uid)
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
    return subdirs


def _own(name: str | Path, dirfd: int | None, uid: int) -> None:
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if st.st_uid == uid and st.st_gid == uid:
        return
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return
    with contextlib.suppress(FileNotFoundError):
        os.chown(name, uid, uid, dir_fd=dirfd, follow_symlinks=False)


PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "hal:x:{uid}:{gid}:hal:/home/hal:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nhal:x:{gid}:\nnogroup:x:65534:\n"


def accounts(uid: int, gid: int) -> dict[str, str]:
    """The text of ``passwd`` and ``group`` naming the sandbox user ``hal`` (tools look their
    user up; the host's own files would also list the host's accounts), by file name."""
    return {"passwd": PASSWD.format(uid=uid, gid=gid), "group": GROUP.format(gid=gid)}


def own_created(root: Path, relative: str, uid: int) -> None:
    """Hand to ``uid`` what the host just created at ``root/relative`` (a written file and
    the parents made for it): each component still owned by this process, walked by
    directory fd with ``O_NOFOLLOW`` so a planted link is never followed. ``root`` is a mount
    source named by hal (a pool slot's link to a session directory), so it is resolved first."""
    me = os.geteuid()
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    root = Path(os.path.realpath(root))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for index, name in enumerate(parts):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if st.st_uid == me and not (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
            if index == len(parts) - 1 or not stat.S_ISDIR(st.st_mode):
                return
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                return  # swapped for a link or removed meanwhile: nothing of ours below
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def drop_helper(path: Path = DROP_HELPER_BUILT) -> str | None:
    """The host path of the static uid switch (``scripts/hal-drop.c``) when it is there and
    as trustworthy as hal's own code: a regular file of root's or ours, which nobody else can
    write. It runs as root inside the sandbox until it drops, so anything else means setpriv.
    """
    return trusted_program(path)


DROP_HELPER_WAITS = b"hal-drop abi: wait-closes"
"""What a build of the uid switch that takes ``UID --wait`` holds (see :func:`waits`): one
that closes its fds above 2 first, which the keeper's launcher waits for (an older build's
``--wait`` would keep them, and the launcher would wait 10 s)."""


def waits(program: str) -> bool:
    """Whether the uid switch ``program`` (a host path) takes ``UID --wait``: switch, then
    wait for a signal running nothing (a keeper, one exec fewer than ``sleep``)."""
    st = os.stat(program)
    return _holds_wait(program, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.cache
def _holds_wait(program: str, *version: int) -> bool:
    with open(program, "rb") as file:
        return DROP_HELPER_WAITS in file.read()


def trusted_program(path: Path) -> str | None:
    """``path`` as a string when it is a program as trustworthy as hal's own code (a regular,
    executable file of root's or ours that nobody else can write), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    trusted = st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not (stat.S_ISREG(st.st_mode) and trusted and st.st_mode & stat.S_IXUSR):
        return None
    return str(path)


_names: dict[tuple[int, int, int, int], str] = {}
""":func:`installed_name` by the program's device, inode, size and time."""


def installed_name(helper: str) -> str:
    """The name the uid switch ``helper`` has among a provider's shared files,
    ``hal-drop-<digest of its content>``: a rebuilt program is installed beside the old one,
    never over it, so no kept sandbox's bind loses its source while a command attaches it
    (a file unlinked between the launcher's ``open_tree`` and ``move_mount`` fails the
    command with ENOENT). Read once per version of the program."""
    st = os.stat(helper)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    name = _names.get(key)
    if name is None:
        with open(helper, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()[:16]
        if len(_names) >= 16:
            _names.clear()
        name = _names[key] = f"hal-drop-{digest}"
    return name


def install_helper(helper: str, target: Path) -> None:
    """Put the uid switch ``helper`` at ``target`` (the read-only files every sandbox of a
    provider binds): a hard link where the filesystem allows, else a copy; replaced
    atomically, under a unique temporary name (other hal processes may be installing it
    too). Already a link to it, or a copy of it (every create and reset checks): left alone.

    A copy (a ``HAL_HOME`` on another filesystem than hal) carries the program's size and
    modification time, and counts as current while both match: replacing it at every reset
    gave every kept sandbox of the pool a new source to attach at its next command, and a
    command whose source was replaced between the launcher's ``open_tree`` and
    ``move_mount`` failed with ENOENT (status 125)."""
    want = os.stat(helper)
    with contextlib.suppress(OSError):
        have = os.stat(target, follow_symlinks=False)
        if os.path.samestat(want, have) or _is_copy_of(have, want):
            return
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = fs.temp_beside(target)
    try:
        try:
            os.link(helper, tmp)
        except OSError:
            shutil.copyfile(helper, tmp)
            os.chmod(tmp, 0o755)
            os.utime(tmp, ns=(want.st_atime_ns, want.st_mtime_ns))
        fs.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _is_copy_of(have: os.stat_result, want: os.stat_result) -> bool:
    """Whether ``have`` is the copy :func:`install_helper` makes of ``want``: a regular file
    of ours, nobody else's to write, one name, the program's size and time."""
    return (
        stat.S_ISREG(have.st_mode)
        and stat.S_IMODE(have.st_mode) == 0o755
        and have.st_uid == os.geteuid()
        and have.st_nlink == 1
        and (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns)
    )


def drop_privileges(uid: int | None, *, rootfs: bool, helper: bool = False) -> list[str]:
    """The argv prefix that switches a command inside to ``uid`` (nothing without one):
    :data:`DROP_HELPER` when ``helper`` (the caller binds it there), else setpriv."""
    if uid is None:
        return []
    if helper:
        return [DROP_HELPER, str(uid), "--"]
    setpriv = [SETPRIV]
    if rootfs:
        # The rootfs need not have setpriv: run the host's, with the host's loader and libs.
        loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2").removeprefix("/usr")
        lib = f"{HOST_USR}/lib/{os.uname().machine}-linux-gnu"
        setpriv = [f"{HOST_USR}{loader}", "--library-path", lib, f"{HOST_USR}/bin/setpriv"]
    return [
        *setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]  # fmt: skip
