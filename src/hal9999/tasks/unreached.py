"""Other tasks' results taken out of a copy of a source's object store before a sandbox
sees it (stop 48).

Every result hal brings back lands in the source as a pack of its own (a bundle is always
unbundled into a pack), and git's local copy of a repository (``clone --local``, what a
snapshot and a whole clone are) copies every pack. Dropping hal's ``hal/...`` refs from the
copy hid their names but not their objects: ``git cat-file --batch-all-objects`` in any
later task's checkout read every other task's result, a hive agent's branch included. So
the objects only those refs reached are removed from the copy here: a loose one is
unlinked, a pack that holds nothing else is deleted whole (a brought-back result's own
pack: no git runs), and only a pack that holds them among others (the source's own
``git gc`` packed them together) makes ``git repack -a -d`` rewrite it, the clean packs
kept as they are.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import mmap
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from hal9999.errors import RepoError
from hal9999.tasks import gitrepo

_PACK_FILES = (".pack", ".idx", ".rev", ".bitmap", ".keep", ".promisor", ".mtimes")


async def drop_only_reached_by(
    repo: Path, objects: Path, tips: Sequence[str], config: Sequence[str] = ()
) -> None:
    """Remove from ``repo`` (whose object store is ``objects``, unshared) every object that
    the commits ``tips`` reach and none of its refs or its HEAD does; the caller deleted
    the refs naming ``tips`` first. ``config``: options before git's command."""
    if not tips:
        return
    listed = await gitrepo.git(
        [*config, "rev-list", "--objects", "--no-object-names", "--ignore-missing", "--stdin",
         "--not", "--all"],
        cwd=repo, stdin="".join(f"{tip}\n" for tip in tips).encode(),
        what="leaving other tasks' results out",
    )  # fmt: skip
    only = {bytes.fromhex(line) for line in listed.split()}
    if not only:
        return
    mixed, clean = await asyncio.to_thread(_drop, objects, only)
    if mixed:
        keep = [f"--keep-pack={name}" for name in clean]
        await gitrepo.git(
            [*config, "repack", "-a", "-d", "-q", "--no-write-bitmap-index", *keep],
            cwd=repo, what="leaving other tasks' results out",
        )  # fmt: skip


async def kept_aside(top: str) -> list[str] | None:
    """The commits the source ``top`` keeps outside its branches and tags, which its local
    copy has the objects of but no ref to: other refs' (the operator's stash,
    ``refs/hal-incoming/...``, its own remote-tracking branches) and every reflog's entries
    (the stash's older ones, a commit dropped or amended). None when git cannot tell."""
    try:
        listed = await gitrepo.git(
            ["-c", f"safe.directory={top}", "rev-list", "--no-walk", "--reflog",
             "--exclude=refs/heads/*", "--exclude=refs/tags/*", "--all"],
            cwd=Path(top), what="leaving what no branch reaches out",
        )  # fmt: skip
    except RepoError:
        return None
    return listed.split()


async def drop_unreachable(repo: Path, config: Sequence[str] = ()) -> None:
    """Remove from ``repo`` every packed object its refs and HEAD do not reach (one
    ``repack -a -d``: a walk of the whole store), for when the tips are not known."""
    await gitrepo.git([*config, "repack", "-a", "-d", "-q", "--no-write-bitmap-index"], cwd=repo,
              what="leaving what no branch reaches out")  # fmt: skip


def _drop(objects: Path, only: set[bytes]) -> tuple[bool, list[str]]:
    """Unlink the loose objects in ``only`` and the packs holding nothing else; whether a
    pack holds some of them among others, and the names of the packs holding none."""
    # Indexes over the whole store list the objects going (the source's gc writes a
    # commit-graph; git fails on a commit it lists and cannot read): git works without them.
    (objects / "info" / "commit-graph").unlink(missing_ok=True)
    shutil.rmtree(objects / "info" / "commit-graphs", ignore_errors=True)
    for index in (objects / "pack").glob("multi-pack-index*"):
        index.unlink()
    for oid in only:
        name = oid.hex()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(objects / name[:2] / name[2:])
    mixed, clean = False, []
    pack_dir = objects / "pack"
    size = len(next(iter(only)))
    for entry in sorted(os.listdir(pack_dir)) if pack_dir.is_dir() else []:
        if not entry.endswith(".idx"):
            continue
        base = entry[: -len(".idx")]
        found = _found(pack_dir / entry, only, size)
        if found == (0, False):
            clean.append(f"{base}.pack")
        elif found[1]:  # every object of the pack is one of them
            for suffix in _PACK_FILES:
                (pack_dir / f"{base}{suffix}").unlink(missing_ok=True)
        else:
            mixed = True  # rewritten by the repack, which a .keep would stop
            (pack_dir / f"{base}.keep").unlink(missing_ok=True)
    return mixed, clean


class _Names:
    """The sorted object names of a version 2 pack index, read in place."""

    def __init__(self, data: mmap.mmap, size: int, count: int) -> None:
        self.data, self.size, self.count = data, size, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> bytes:
        at = _NAMES + index * self.size
        return self.data[at : at + self.size]


_NAMES = 8 + 256 * 4
"""Where a version 2 index's names start: after its header and its fan-out table."""


def _found(path: Path, only: set[bytes], size: int) -> tuple[int, bool]:
    """How many of ``only`` the pack indexed at ``path`` holds, and whether it holds
    nothing else; (-1, False) for an index not in version 2's form (git rewrites that pack
    then, never a guess here)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:8] != b"\377tOc\0\0\0\2" or len(data) < _NAMES:
            return -1, False
        count = int.from_bytes(data[_NAMES - 4 : _NAMES], "big")
        if len(data) < _NAMES + count * size:
            return -1, False
        names = _Names(data, size, count)
        hits = 0
        for oid in only:
            at = bisect.bisect_left(names, oid)
            hits += at < count and names[at] == oid
        return hits, hits == count


REMOTE_RESULTS = "refs/remotes/origin/hal/"
"""Where a whole clone of a local source keeps the source's result branches."""


async def hide_remote_results(dest: Path, config: Sequence[str], top: str) -> None:
    """Delete a fresh whole clone's remote-tracking refs of hal's result branches (another
    task's result, another hive agent's branch, each by its name under ``origin/hal/``) and
    the objects only they, or what the source ``top`` keeps aside (:func:`kept_aside`),
    reach. ``config``: options before git's command."""
    found = await asyncio.to_thread(_remote_results, dest / ".git")
    if found:
        script = "".join(f"delete {ref}\n" for _tip, ref in found)
        await gitrepo.git([*config, "update-ref", "--stdin"], cwd=dest, stdin=script.encode(),
                  what="leaving other tasks' results out")  # fmt: skip
    aside = await kept_aside(top)
    if aside is None:
        await drop_unreachable(dest, config)
        return
    tips = sorted({tip for tip, _ref in found} | set(aside))
    await drop_only_reached_by(dest, dest / ".git" / "objects", tips, config)


def _remote_results(git_dir: Path) -> list[tuple[str, str]]:
    """The ``(commit, ref)`` of each ref under :data:`REMOTE_RESULTS`, packed (as a clone
    writes them) or loose."""
    found = []
    try:
        with open(git_dir / "packed-refs", encoding="utf-8", errors="replace") as packed:
            for line in packed:
                tip, _, ref = line.rstrip("\n").partition(" ")
                if ref.startswith(REMOTE_RESULTS):
                    found.append((tip, ref))
    except FileNotFoundError:
        pass
    loose = git_dir / REMOTE_RESULTS
    for folder, _dirs, files in os.walk(loose):
        for name in files:
            path = os.path.join(folder, name)
            ref = os.path.relpath(path, git_dir)
            with open(path, encoding="utf-8", errors="replace") as file:
                found.append((file.read().strip(), ref))
    return found
