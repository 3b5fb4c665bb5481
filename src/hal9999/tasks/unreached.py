"""What no ref reaches taken out of a copy of a source's object store before a sandbox
sees it (stops 48 and 49).

Git's local copy of a repository (``clone --local``, what a snapshot and a whole clone are)
copies every pack and loose object of the source, whatever reaches them: another task's
result (each lands in the source as a pack of its own, its ``hal/...`` ref deleted from
the copy), the operator's stash, a commit dropped, amended or reset past, its reflog
expired or not, a ``stash drop``, a loose object nothing names. ``git cat-file
--batch-all-objects`` or ``git fsck --lost-found`` in the checkout read each. So after the
copy's refs are what the agent is meant to see, one ``rev-list --objects --all`` lists what
they reach and every other object goes: a loose one is unlinked, a pack that holds nothing
else is deleted whole, and only a pack that holds both (the source's own ``git gc`` packed
them together) is rewritten, by ``pack-objects`` of the listed objects it holds (no second
walk). When the store's object count is the count listed, nothing else is read.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from hal9999.errors import RepoError
from hal9999.tasks import gitrepo

_PACK_FILES = (".pack", ".idx", ".rev", ".bitmap", ".keep", ".promisor", ".mtimes")
_WHAT = "leaving out what no branch reaches"


async def keep_only_reachable(
    repo: Path, objects: Path, config: Sequence[str] = (), since: Path | None = None
) -> None:
    """Remove from ``repo`` (whose object store is ``objects``, unshared) every object its
    refs and HEAD do not reach. ``config``: options before git's command. ``since``: an
    earlier copy of the same source holding exactly what its own refs reached, its refs all
    packed; when every object those reached is reached here too, only what is new since is
    walked."""
    reached = await _reached_since(repo, since, config) if since is not None else None
    if reached is None:
        listed = await gitrepo.git(
            [*config, "rev-list", "--objects", "--no-object-names", "--all"], cwd=repo, what=_WHAT
        )
        reached = {bytes.fromhex(line) for line in listed.split()}
    rewrite = await asyncio.to_thread(_drop, objects, reached)
    if rewrite is None:
        return
    keep, mixed = rewrite
    if mixed is None:  # an index in a form not read here: git rewrites every pack
        await gitrepo.git([*config, "repack", "-a", "-d", "-q", "--no-write-bitmap-index"],
                          cwd=repo, what=_WHAT)  # fmt: skip
        return
    if keep:
        made = await gitrepo.git(
            [*config, "pack-objects", "-q", "--delta-base-offset", str(objects / "pack" / "pack")],
            cwd=repo, stdin="".join(f"{oid.hex()}\n" for oid in keep).encode(), what=_WHAT,
        )  # fmt: skip
        mixed = [base for base in mixed if base != f"pack-{made.strip()}"]
    await asyncio.to_thread(_unlink_packs, objects / "pack", mixed)


async def _reached_since(repo: Path, since: Path, config: Sequence[str]) -> set[bytes] | None:
    """The objects ``repo``'s refs and HEAD reach, from ``since``'s objects and a walk of
    what is new; None when something ``since`` reached is reached no more (a branch reset
    or deleted, a tag deleted), or ``since`` is not in the form this reads."""
    tips = await asyncio.to_thread(_tips, since)
    if not tips:
        return None
    stdin = "".join(f"{tip}\n" for tip in tips).encode()
    try:  # what the earlier refs reached and these do not: nothing, else a whole walk
        gone = await gitrepo.git(
            [*config, "rev-list", "--objects", "--count", "--stdin", "--not", "--all"],
            cwd=repo, stdin=stdin, what=_WHAT,
        )  # fmt: skip
        if gone.strip() != "0":
            return None
        listed = await gitrepo.git(
            [*config, "rev-list", "--objects", "--no-object-names", "--all", "--stdin"],
            cwd=repo, stdin="".join(f"^{tip}\n" for tip in tips).encode(), what=_WHAT,
        )  # fmt: skip
    except RepoError:  # an earlier tip this copy has not got
        return None
    reached = await asyncio.to_thread(_store, since / "objects", len(tips[0]) // 2)
    return None if reached is None else reached | {bytes.fromhex(line) for line in listed.split()}


def _tips(repo: Path) -> list[str]:
    """The values of the bare ``repo``'s refs and of a detached HEAD, all its refs packed;
    none when a ref is loose (not the form of a snapshot)."""
    for _folder, _dirs, files in os.walk(repo / "refs"):
        if files:
            return []
    tips = []
    try:
        with open(repo / "packed-refs", encoding="ascii") as packed:
            tips = [line.split(" ", 1)[0] for line in packed if line[:1] not in "#^"]
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        return []
    head = (repo / "HEAD").read_text(encoding="ascii", errors="replace").strip()
    if not head.startswith("ref:"):
        tips.append(head)
    return [tip for tip in tips if tip and all(c in "0123456789abcdef" for c in tip)]


def _store(objects: Path, size: int) -> set[bytes] | None:
    """Every name, ``size`` bytes, of an object in the store ``objects`` (read only); None
    when a pack index is not read here."""
    pack_dir = objects / "pack"
    found = {oid for oid in _loose(objects, remove=False) if len(oid) == size}
    for name in os.listdir(pack_dir) if pack_dir.is_dir() else []:
        if name.endswith(".idx"):
            count = _count(pack_dir / name)
            if count < 0:
                return None
            found.update(_names(pack_dir / name, count, size))
    return found


def _drop(objects: Path, reached: set[bytes]) -> tuple[set[bytes], list[str] | None] | None:
    """Unlink the loose objects not in ``reached``; None when the store held nothing else,
    else the reached objects of the packs holding others and those packs' names (None for
    the names: a pack index not read here, every pack left to git's repack)."""
    pack_dir = objects / "pack"
    entries = os.listdir(pack_dir) if pack_dir.is_dir() else []
    indexes = sorted(entry for entry in entries if entry.endswith(".idx"))
    loose = _loose(objects)
    counts = [_count(pack_dir / name) for name in indexes]
    borrowed = (objects / "info" / "alternates").exists()  # reached objects kept elsewhere
    if not borrowed and -1 not in counts and sum(counts) + len(loose) == len(reached):
        return None  # every object is a reached one: nothing to read further
    for oid, path in loose.items():
        if oid not in reached:
            os.unlink(path)
    for entry in entries:
        if entry.startswith("tmp_"):  # a pack the source was writing: any object at all
            os.unlink(pack_dir / entry)
    # Indexes over the whole store list the objects going (git fails on a commit the
    # commit-graph lists and it cannot read): git works without them.
    (objects / "info" / "commit-graph").unlink(missing_ok=True)
    (objects / "info" / "packs").unlink(missing_ok=True)
    shutil.rmtree(objects / "info" / "commit-graphs", ignore_errors=True)
    for index in pack_dir.glob("multi-pack-index*"):
        index.unlink()
    if -1 in counts:
        return set(), None
    size = len(next(iter(reached))) if reached else 20
    keep: set[bytes] = set()
    mixed: list[str] = []
    for name, count in zip(indexes, counts, strict=True):
        held = reached.intersection(_names(pack_dir / name, count, size))
        if len(held) != count:
            mixed.append(name[: -len(".idx")])
            keep |= held
    return keep, mixed


def _unlink_packs(pack_dir: Path, bases: Sequence[str]) -> None:
    for base in bases:
        for suffix in _PACK_FILES:
            (pack_dir / f"{base}{suffix}").unlink(missing_ok=True)


def _loose(objects: Path, remove: bool = True) -> dict[bytes, str]:
    """The store's loose objects by name, anything else in their folders (a temporary
    object being written) under a name no object has; with ``remove``, a folder of objects
    the source was receiving (a push's quarantine) removed."""
    found: dict[bytes, str] = {}
    with os.scandir(objects) as folders:
        for folder in folders:
            if folder.name in ("pack", "info") or not folder.is_dir(follow_symlinks=False):
                continue
            if len(folder.name) != 2:
                if remove:
                    shutil.rmtree(folder.path)
                continue
            for entry in os.listdir(folder.path):
                path = os.path.join(folder.path, entry)
                try:
                    found[bytes.fromhex(folder.name + entry)] = path
                except ValueError:
                    found[path.encode()] = path  # never a reached name: unlinked
    return found


_NAMES = 8 + 256 * 4
"""Where a version 2 pack index's names start: after its header and its fan-out table."""
_V2 = b"\377tOc\0\0\0\2"


def _count(path: Path) -> int:
    """The number of objects the pack indexed at ``path`` holds; -1 for an index not in
    version 2's form."""
    with open(path, "rb") as file:
        head = file.read(_NAMES)
    if head[:8] != _V2 or len(head) < _NAMES:
        return -1
    return int.from_bytes(head[_NAMES - 4 :], "big")


def _names(path: Path, count: int, size: int) -> list[bytes]:
    """The ``count`` object names, ``size`` bytes each, of the version 2 pack index at
    ``path``."""
    with open(path, "rb") as file:
        file.seek(_NAMES)
        data = file.read(count * size)
    return [data[at : at + size] for at in range(0, len(data), size)]


REMOTE_RESULTS = "refs/remotes/origin/hal/"
"""Where a whole clone of a local source keeps the source's result branches."""


async def hide_remote_results(dest: Path, config: Sequence[str]) -> None:
    """Delete a fresh whole clone's remote-tracking refs of hal's result branches (another
    task's result, another hive agent's branch, each by its name under ``origin/hal/``),
    then every object its refs left do not reach (:func:`keep_only_reachable`).
    ``config``: options before git's command."""
    found = await asyncio.to_thread(_remote_results, dest / ".git")
    if found:
        script = "".join(f"delete {ref}\n" for _tip, ref in found)
        await gitrepo.git([*config, "update-ref", "--stdin"], cwd=dest, stdin=script.encode(),
                  what="leaving other tasks' results out")  # fmt: skip
    await keep_only_reachable(dest, dest / ".git" / "objects", config)


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
