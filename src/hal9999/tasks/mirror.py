"""Shared, read-only object stores for the checkouts of local repositories.

A bwrap task on a local repository used to copy the repository's whole object store into
its checkout: a thousand tasks on a 1 GiB repository wrote a thousand GiB. Now hal keeps,
per source repository, *snapshots*: git's local copy of the source's object store (the
copy each task used to make), without hal's own result branches, and without any object
its branches, tags and HEAD do not reach (:mod:`unreached`: another task's result, a
stash, a commit dropped, amended or reset past with a secret in it). A task's checkout
is a ``clone --shared`` of the newest snapshot: it borrows the snapshot's objects through
``objects/info/alternates`` and holds only what its agent adds. The snapshot is mounted
read-only inside the sandbox at :data:`OBJECTS_TARGET`; the alternates entry is the relative
``../../../.hal-objects``, which names that mount inside and, on the host, the session's
link to the snapshot (so no host path is written into the checkout)::

    <home>/mirrors/
      .key              random key: a source's directory name is its keyed hash
      <name>/lock       flock while a snapshot is chosen, made, linked or swept
      <name>/current    the newest snapshot's directory name
      <name>/<snap>/    a bare clone; <snap>/hal-refs: the source's refs it was made from
    <session>/.hal-objects -> <home>/mirrors/<name>/<snap>/objects

A snapshot is never changed after it is made: when the source's refs change (any file
under ``refs/heads``, ``refs/tags``, ``packed-refs`` or ``HEAD`` is replaced), the next task
makes a new one. An old snapshot is removed once no session links to it (checked when a
newer one is made and when a task is removed), so a resumed task finds its objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from hal9999 import flock, fs
from hal9999.errors import RepoError
from hal9999.home import HalPaths
from hal9999.hostread import read_all, read_text
from hal9999.tasks.gitrepo import git

OBJECTS_LINK = ".hal-objects"
"""In a session directory: the link to the snapshot's objects its checkout borrows."""
OBJECTS_TARGET = "/.hal-objects"
"""Where a sandbox sees the snapshot's objects (read-only)."""
ALTERNATES = "../../../.hal-objects\n"
"""The checkout's alternates entry, relative to ``workspace/.git/objects`` (git reads a
relative entry against the objects directory): the session's link on the host, the mount
inside the sandbox, whose workspace is ``/workspace``."""
REFS_FILE = "hal-refs"
GITLINKS_FILE = "hal-gitlinks"
REACHED_FILE = "hal-reached"
"""In a snapshot whose objects were pruned: it holds only the objects its refs and HEAD reach, so
the next snapshot walks only what is new (:func:`unreached.keep_only_reachable`)."""
"""In a snapshot: ``<HEAD's commit> <gitlinks in its tree>``, so that collecting a task
that changed nothing from that commit needs no ``ls-files`` (:mod:`hal9999.tasks.collect`)."""
RESULTS = "refs/heads/hal/"
"""hal's result branches: left out of snapshots (each task's adds one to the source), so
a finished task does not make the next one snapshot again."""
_LOCK_POLL = 0.02


def mirrors_dir(home: Path) -> Path:
    """Where the snapshots of every source live."""
    return home / "mirrors"


def fingerprint(top: Path) -> str | None:
    """A digest of the files that hold ``top``'s branches, tags and HEAD (path, inode, size,
    mtime: git replaces a ref file by renaming a new one over it), or None for a layout this
    does not follow (a linked worktree or submodule whose ``.git`` is a file, reftable):
    such a source is cloned whole, as before."""
    git_dir = top / ".git"
    try:
        if not git_dir.is_dir() or git_dir.is_symlink():
            return None
        if (git_dir / "reftable").exists() or (git_dir / "commondir").exists():
            return None
        lines = [_stat_line(git_dir, "HEAD"), _stat_line(git_dir, "packed-refs")]
        head = read_text(git_dir / "HEAD").strip()
        if head.startswith(f"ref: {RESULTS}"):  # the user is on a result branch
            lines.append(_stat_line(git_dir, head[len("ref: ") :]))
        for sub in ("refs/heads", "refs/tags"):
            for folder, dirs, files in os.walk(git_dir / sub):
                dirs.sort()
                if folder == str(git_dir / "refs" / "heads"):
                    dirs[:] = [d for d in dirs if d != "hal"]
                for name in sorted(files):
                    rel = os.path.relpath(os.path.join(folder, name), git_dir)
                    lines.append(_stat_line(git_dir, rel))
    except OSError:
        return None
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _stat_line(git_dir: Path, rel: str) -> str:
    try:
        st = os.lstat(git_dir / rel)
    except FileNotFoundError:
        return f"{rel} -"
    return f"{rel} {st.st_ino} {st.st_size} {st.st_mtime_ns}"


def source_name(home: Path, top: str) -> str:
    """The directory name of ``top``'s snapshots: a keyed hash, so that a sandbox, which
    can see the mount's source path in its mountinfo, cannot confirm a guess of the
    repository's host path."""
    key_path = mirrors_dir(home) / ".key"
    try:
        key = read_all(str(key_path))
    except FileNotFoundError:
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = key_path.with_name(f".key.{secrets.token_hex(4)}")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
        finally:
            os.close(fd)
        try:
            os.link(fresh, key_path)  # the first writer's key wins; never replaced
        except FileExistsError:
            pass
        finally:
            fresh.unlink()
        key = key_path.read_bytes()
    return hmac.new(key, os.fsencode(top), hashlib.sha256).hexdigest()[:24]


@contextlib.asynccontextmanager
async def locked(base: Path) -> AsyncIterator[None]:
    """Hold ``base``'s lock (between processes); waiting never blocks the event loop and a
    cancelled wait leaves nothing held."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    async with flock.held(base / "lock", poll=_LOCK_POLL):
        yield


async def snapshot_for(
    home: Path,
    top: str,
    session_root: Path,
    ref: str | None,
    identified: tuple[str | None, str] | None = None,
) -> Path | None:
    """Link ``session_root`` to the newest snapshot of the local repository ``top`` (made
    now when the source's refs changed since) and return the snapshot; None, with the
    session's link an empty directory, when the source is not in a layout this follows or
    ``ref`` is not in the snapshot (a commit no branch or tag reaches): the caller clones
    the source whole then, with the errors it gives. ``identified``: :func:`identify`'s
    answer, when the caller had it read in a thread hop of its own."""
    if identified is None:
        identified = await asyncio.to_thread(identify, home, top, session_root)
    fp, name = identified
    if fp is None:
        return None
    base = mirrors_dir(home) / name
    async with locked(base):
        # The common case, a current snapshot and any commit, linked in the same thread hop
        # (the lock is held across it, by every task on the repository in turn).
        snap, linked = await asyncio.to_thread(_current, base, fp, session_root, ref is None)
        if linked:
            return snap
        if snap is None:
            try:
                snap = await _make(base, top, fp)
            except (RepoError, OSError):
                # An empty repository, a HEAD naming no commit, ...: the whole clone says
                # what is wrong, as it always did.
                await asyncio.to_thread(link_empty, session_root)
                return None
            await asyncio.to_thread(sweep_locked, home, base)
        if ref is not None and not await _has_commit(snap, ref):
            await asyncio.to_thread(link_empty, session_root)
            return None
        await asyncio.to_thread(_link, session_root, snap / "objects")
    return snap


def identify(home: Path, top: str, session_root: Path) -> tuple[str | None, str]:
    """The source's fingerprint and its snapshots' directory name (blocking: for a thread
    hop); a source this does not follow gets the session's empty link (and no name)."""
    fp = fingerprint(Path(top))
    if fp is None:
        link_empty(session_root)
        return None, ""
    return fp, source_name(home, top)


def _current(base: Path, fp: str, session_root: Path, link: bool) -> tuple[Path | None, bool]:
    """The current snapshot when it is of the source's refs ``fp``, and whether it is
    linked now (``link``: with the session's link pointed at it when there is one)."""
    try:
        name = read_text(base / "current").strip()
        snap = base / name
        if not name or read_text(snap / REFS_FILE) != fp:
            return None, False
    except OSError:
        return None, False
    if link:
        _link(session_root, snap / "objects")
    return snap, link


async def _make(base: Path, top: str, fp: str) -> Path:
    """A new snapshot of ``top``, never changed afterwards: git's local copy of its object
    store (as fast as the per-task copy it replaces), without hal's result branches nor
    any object its branches, tags and HEAD do not reach (:mod:`unreached`); readable by a
    sandbox's own uid."""
    name = f"s-{secrets.token_hex(6)}"
    work = base / f".{name}.tmp"
    try:
        await git(
            # --dissociate: a source that itself borrows objects (a `clone --shared`) is
            # copied whole, as a sandbox sees no other host path to borrow them from.
            ["clone", "--quiet", "--bare", "--no-hardlinks", "--dissociate", "--", top, str(work)],
            what=f"copying {top}",
        )
        results = await git(
            ["for-each-ref", "--format=%(objectname) %(refname)", RESULTS], cwd=work,
            what="making a snapshot",
        )  # fmt: skip
        if (work / "HEAD").read_text().startswith(f"ref: {RESULTS}"):  # on a result branch
            commit = await git(["rev-parse", "--verify", "HEAD^{commit}"], cwd=work)
            (work / "HEAD").write_text(f"{commit}\n")
        pairs = [line.split(" ", 1) for line in results.splitlines()]
        if pairs:
            script = "".join(f"delete {ref}\n" for _tip, ref in pairs)
            await git(["update-ref", "--stdin"], cwd=work, stdin=script.encode())
        from hal9999.tasks import unreached  # a snapshot's making only

        since = await asyncio.to_thread(_previous, base)
        await unreached.keep_only_reachable(work, work / "objects", since=since)
        await _count_gitlinks(work)
        await asyncio.to_thread(_finish, work, fp)
        await asyncio.to_thread(os.rename, work, base / name)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, work, True)
        raise
    await asyncio.to_thread(_write_current, base, name)
    return base / name


async def _count_gitlinks(work: Path) -> None:
    """Write :data:`GITLINKS_FILE` for the snapshot's HEAD (once per snapshot; nothing when
    HEAD names no commit)."""
    try:
        commit = await git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=work)
    except RepoError:
        return
    listing = await git(["ls-tree", "-r", "-z", "--full-tree", commit], cwd=work)
    count = sum(entry.startswith("160000 ") for entry in listing.split("\0"))
    (work / GITLINKS_FILE).write_text(f"{commit} {count}\n")


def base_without_gitlinks(session_root: Path, base: str) -> bool:
    """Whether ``base`` is the HEAD of the snapshot the session borrows from, known to have
    no gitlinks in its tree (the snapshot is the host's, never writable by a sandbox). A
    ``readlink`` and one small read: a caller on an event loop makes it there."""
    snap = linked_snapshot(session_root)
    if snap is None:
        return False
    try:
        return read_text(snap / GITLINKS_FILE) == f"{base} 0\n"
    except (OSError, UnicodeDecodeError):
        return False


def _previous(base: Path) -> Path | None:
    """The current snapshot when it holds only what its refs reach (:data:`REACHED_FILE`)."""
    try:
        snap = base / read_text(base / "current").strip()
    except OSError:
        return None
    return snap if (snap / REACHED_FILE).is_file() else None


def _finish(work: Path, fp: str) -> None:
    (work / REFS_FILE).write_text(fp)
    (work / REACHED_FILE).touch()
    # The sandbox's own uid (hal as root) reads it through the read-only mount.
    for folder, _dirs, files in os.walk(work / "objects"):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
    os.chmod(work, 0o755)


def _write_current(base: Path, name: str) -> None:
    fs.write_text(base / "current", name, mode=None, durable=False)


async def _has_commit(snap: Path, ref: str) -> bool:
    for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
        with contextlib.suppress(RepoError):
            await git(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"],
                cwd=snap,
            )
            return True
    return False


def _link(session_root: Path, objects: Path) -> None:
    """Point the session's link at ``objects`` (replacing an empty placeholder or an older
    link: a clone that is being redone)."""
    link = session_root / OBJECTS_LINK
    if link.is_dir() and not link.is_symlink():
        link.rmdir()
    fs.symlink(objects, link)


def link_empty(session_root: Path) -> None:
    """The session's link as an empty directory: the mount has a source, the checkout
    borrows nothing (a full clone, or a session from before snapshots)."""
    link = session_root / OBJECTS_LINK
    if link.is_symlink():
        link.unlink()
    with contextlib.suppress(FileExistsError):
        link.mkdir(mode=0o755)


def check_link(session_root: Path, *, fresh: bool, branch: str = "") -> None:
    """Before a run: the session's link exists (an empty directory until a clone links it;
    a session from before snapshots gets one too) and, unless the run clones afresh
    (``fresh``), the objects its checkout borrows are still there."""
    link = session_root / OBJECTS_LINK
    if not os.path.lexists(link) or (fresh and not link.exists()):
        link_empty(session_root)
    elif not link.exists():
        raise RepoError(
            f"the objects this task's checkout borrows are gone ({os.readlink(link)})",
            hint=f"start a new task from its result (`hal run --ref {branch or 'BRANCH'}`)",
        )


def linked_snapshot(session_root: Path) -> Path | None:
    """The snapshot a session links to, if any."""
    try:
        target = Path(os.readlink(session_root / OBJECTS_LINK))
    except OSError:
        return None
    return target.parent


def sweep_locked(home: Path, base: Path) -> list[str]:
    """Remove ``base``'s snapshots no session links to, except the current one (the
    caller holds ``base``'s lock); the names removed."""
    try:
        current = (base / "current").read_text().strip()
    except OSError:
        current = ""
    used = {current}
    sessions = HalPaths(home).sessions
    try:
        entries = list(os.scandir(sessions))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        snap = linked_snapshot(Path(entry.path))
        if snap is not None and snap.parent == base:
            used.add(snap.name)
    removed = []
    for entry in os.scandir(base):
        # A snapshot no session uses, or one whose making died with its hal process (the
        # lock held here means no other is being made now).
        unused = entry.name.startswith("s-") and entry.name not in used
        dead = entry.name.startswith(".s-") and entry.name.endswith(".tmp")
        if (unused or dead) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


async def sweep_after_removal(home: Path, snap: Path) -> None:
    """After a session that linked to ``snap`` was removed: drop the snapshots of its
    source that no session uses any more."""
    base = snap.parent
    if base.parent != mirrors_dir(home) or not base.is_dir():
        return
    async with locked(base):
        await asyncio.to_thread(sweep_locked, home, base)


def alternates_pointed(workspace: Path) -> bool:
    """Whether a fresh checkout's alternates already name the session's link (hal's own
    ``.git`` is written so): one small read, which a caller on an event loop makes itself
    rather than hop to a thread for :func:`point_alternates`."""
    path = workspace / ".git" / "objects" / "info" / "alternates"
    try:
        return read_text(path) == ALTERNATES
    except (OSError, UnicodeDecodeError):
        return False


def point_alternates(workspace: Path) -> None:
    """Make a fresh ``clone --shared`` borrow through the session's link (relative), not
    the snapshot's host path."""
    if alternates_pointed(workspace):  # written so by hal's own clone: nothing to do
        return
    path = workspace / ".git" / "objects" / "info" / "alternates"
    try:
        fs.write_text(path, ALTERNATES, mode=None, durable=False)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        raise RepoError(
            "the shared clone has no alternates file", hint="report this as a hal bug"
        ) from exc
