"""A task's result bundle fetched into the source repository (:mod:`bringback`'s steps 1-2):
its header read and its one head checked, the fetch into a private ref, or into a quarantine
object directory when the objects must be scanned before the source may keep them, with every
transport but the bundle file refused and every object checked. Every host git on the agent's
objects runs with at most :data:`HEAP` of memory."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from hal9999.errors import RepoError
from hal9999.procs import kill_group_until_gone
from hal9999.tasks.collect import RESULT_LIMIT
from hal9999.tasks.gitrepo import _GIT_SAFE, bounded, git
from hal9999.tasks.partialpack import Mark, drop_partial_packs

# Fetch from a bundle file only: no transport helpers, no remote protocols (a bundle is read
# through the "file" transport), and every received object checked.
_FETCH_SAFE = [
    "-c",
    "protocol.allow=never",
    "-c",
    "protocol.file.allow=always",
    "-c",
    "fetch.fsckObjects=true",
    "-c",
    "transfer.fsckObjects=true",
    # No `git maintenance run --auto` after the fetch: the user's own git does that.
    "-c",
    "maintenance.auto=false",
]
_SIGNATURE = b"# v2 git bundle"
_HEADER_LIMIT = 1 << 20
_OID = re.compile(rb"[0-9a-f]{40}|[0-9a-f]{64}")
HEAP = RESULT_LIMIT
"""The most memory host git may allocate while it reads the agent's objects (the fetch with
its ``index-pack``, the scan, the patch, the copy into the source): the bundle is the agent's,
and a zlib bomb in it, a blob or commit of gigabytes in kilobytes, is inflated whole outside
any sandbox's memory limit (a 3 GiB blob hidden from the sandbox's own diff by a replace ref
took 3 GiB of the host's). Past it git fails and nothing is brought back."""

QUARANTINE = "incoming-objects"
"""In the session root (no sandbox mounts it): where a result's objects wait for the scan."""


async def quarantine_env(repo: Path, quarantine: Path) -> tuple[Path, dict[str, str]]:
    """Make ``quarantine`` an empty object directory; the source's object directory, and the
    environment in which git writes into the quarantine while it reads the source's objects."""
    objects = await _objects_dir(repo)
    await asyncio.to_thread(_fresh_dir, quarantine)
    env = {
        "GIT_OBJECT_DIRECTORY": str(quarantine),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": _alternate(objects),
    }
    return objects, env


SCANNED = "scanned"
"""In the quarantine: the ``rev-list --objects`` lines of the objects the scan saw."""


async def keep(repo: Path, objects: Path, quarantine: Path, safe: str) -> None:
    """Copy the quarantined objects the scan saw (their ``rev-list --objects`` lines in its
    file :data:`SCANNED`) into the source's object directory ``objects``, one pack.

    git writes a pack in its object directory and renames it into place, so it runs with the
    source's as its own and borrows the quarantine's: the other way round (the quarantine's
    own, ``--local`` leaving out the source's objects) the rename crossed from the session to
    the source, which fails when they are on two filesystems (a ``HAL_HOME`` and a repository
    on different disks). Only the listed objects are packed either way; one the source
    already holds elsewhere is packed again (``git gc`` drops the copy)."""
    env = {
        "GIT_OBJECT_DIRECTORY": str(objects),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": _alternate(quarantine),
    }
    with (quarantine / SCANNED).open("rb") as seen:
        async with _no_partial_pack(repo, objects):
            await git(
                ["pack-objects", "--quiet", str(objects / "pack" / "pack")],
                cwd=repo, stdin=seen, env=env, what="keeping the result", hint=safe, heap=HEAP,
            )  # fmt: skip


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    (path / "pack").mkdir(parents=True)


def _alternate(objects: Path) -> str:
    """``objects`` as one entry of ``GIT_ALTERNATE_OBJECT_DIRECTORIES`` (a ``:`` list: a path
    with one, or starting with a quote, goes in C-style quotes, which git reads back)."""
    path = str(objects)
    if ":" not in path and not path.startswith('"'):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _objects_dir(repo: Path) -> Path:
    """The source repository's object directory (git says where, for any other layout than
    a plain ``.git`` directory or a bare repository)."""
    dot = repo / ".git"
    if dot.is_dir() and not (dot / "commondir").exists():
        return dot / "objects"
    if not dot.exists() and (repo / "objects").is_dir() and (repo / "HEAD").is_file():
        return repo / "objects"
    where = await git(
        ["rev-parse", "--path-format=absolute", "--git-path", "objects"],
        cwd=repo, what="finding the repository's objects",
    )  # fmt: skip
    return Path(where)


async def fetch_verified(
    repo: Path,
    bundle: Path,
    branch: str,
    head: str,
    incoming: str,
    safe: str,
    env: dict[str, str] | None = None,
) -> None:
    """Fetch the bundle's one head into ``incoming`` (a ref; or, with ``env`` naming a
    quarantine, ``incoming`` is ``head`` and no ref is written), its objects checked first
    (:func:`check_objects`, in a directory beside the bundle)."""
    session_root = bundle.parent
    if not bundle.is_file() or bundle.is_symlink():
        raise RepoError(f"no result bundle at {bundle}", hint=safe)
    # The header is read here; its prerequisites are checked by the fetch itself (git's
    # unbundle runs `bundle verify`'s check first). A header in another form: git reads it.
    listed = await asyncio.to_thread(bundle_heads, bundle)
    if listed is None:
        await git(
            ["bundle", "verify", "--quiet", str(bundle)],
            cwd=repo, what="verifying", hint=safe, heap=HEAP,
        )  # fmt: skip
        heads = await git(
            ["bundle", "list-heads", str(bundle)], cwd=repo, what="reading the bundle", heap=HEAP
        )
        listed = [line.split(" ", 1) for line in heads.splitlines() if line.strip()]
    if listed != [[head, f"refs/heads/{branch}"]]:
        raise RepoError(
            f"the result bundle does not hold exactly {branch} at {head[:12]} (it lists "
            f"{', '.join(ref for _, ref in listed) or 'nothing'})",
            hint=safe,
        )
    # Before the fetch: after it, the source has the objects, and index-pack compares each
    # with its copy there (twice the time).
    await check_objects(repo, bundle, session_root, safe, env)
    # Into the source itself (no quarantine's env): a fetch that fails, or a hal killed
    # during it, must leave no partial pack there (a quarantine's goes with it).
    writes = _no_partial_pack(repo) if env is None else contextlib.nullcontext()
    async with writes:
        await _fetch(repo, bundle, branch, incoming, safe, env)
    fetched = await git(["rev-parse", "--verify", f"{incoming}^{{commit}}"], cwd=repo, env=env)
    if fetched != head:
        raise RepoError(f"the fetched result is {fetched[:12]}, not {head[:12]}", hint=safe)


async def _fetch(
    repo: Path, bundle: Path, branch: str, incoming: str, safe: str, env: dict[str, str] | None
) -> None:
    await git(
        [
            *_FETCH_SAFE,
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--end-of-options",
            str(bundle),
            f"+refs/heads/{branch}:{incoming}" if env is None else f"refs/heads/{branch}",
        ],
        cwd=repo,
        what=f"fetching the result into {repo}",
        hint=safe,
        env=env,
        heap=HEAP,
    )


@contextlib.asynccontextmanager
async def _no_partial_pack(repo: Path, objects: Path | None = None) -> AsyncIterator[None]:
    """Around a host git that writes a pack into the source's object directory ``objects``:
    what writes of hals killed before left there is removed first, this write is marked while
    it runs, and if it fails or is cancelled, the partial pack it left is removed
    (:mod:`hal9999.tasks.partialpack`)."""
    where = objects or await _objects_dir(repo)
    mark = await asyncio.to_thread(Mark, where)
    try:
        yield
    except BaseException:
        await asyncio.to_thread(drop_partial_packs, where / "pack", mark.began)
        raise
    finally:
        mark.end()


CHECKED = "incoming-check"
"""In the session root: where :func:`check_objects` packs the result's new objects."""


async def check_objects(
    repo: Path, bundle: Path, root: Path, safe: str, env: dict[str, str] | None = None
) -> None:
    """Refuse a bundle whose pack holds an object git's strict checks refuse. The fetch's
    ``fetch.fsckObjects`` does not reach a bundle (git before 2.46 unbundles unchecked): a
    tree holding ``.GIT``, ``git~1`` or ``.git\u200c`` (a ``.git`` to a case-insensitive,
    NTFS or HFS+ checkout, whose hooks the operator's next git there runs), a ``..`` entry,
    a ``.gitmodules`` link or a malformed commit reached the source and its branch. The
    bundle's pack (every object in it, those no commit reaches too) is indexed once more with
    ``--strict`` (warnings are errors; zero-padded modes, which git reads, aside) into a
    directory of ``root`` that is then removed, its bases read from the source."""
    work = root / CHECKED
    await asyncio.to_thread(_fresh_dir, work)
    where = env or {"GIT_ALTERNATE_OBJECT_DIRECTORIES": _alternate(await _objects_dir(repo))}
    try:
        with bundle.open("rb") as pack:
            await asyncio.to_thread(_skip_header, pack)
            await git(
                ["index-pack", "--stdin", "--fix-thin", "--strict=zeroPaddedFilemode=ignore"],
                cwd=repo, stdin=pack, env={**where, "GIT_OBJECT_DIRECTORY": str(work)},
                heap=HEAP, what="checking the result's objects", hint=safe,
            )  # fmt: skip
    except RepoError as exc:
        # A base it lacks is a prerequisite the source lacks: git's own words for that.
        await git(["bundle", "verify", str(bundle)], cwd=repo, what="verifying",
                  hint=safe, env=env, heap=HEAP)  # fmt: skip
        raise RepoError(f"the result holds objects git's checks refuse ({exc.message})",
                        hint=safe) from None  # fmt: skip
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


def _skip_header(file: BinaryIO) -> None:
    """Move ``file`` (a bundle) past its header (up to its first blank line), to its pack."""
    offset, last = 0, b""
    while chunk := file.read(1 << 16):
        end = (last + chunk).find(b"\n\n")
        if end != -1:
            file.seek(offset - len(last) + end + 2)
            return
        offset += len(chunk)
        last = chunk[-1:]
    raise RepoError("the result bundle has no pack after its header")


def bundle_heads(bundle: Path) -> list[list[str]] | None:
    """The refs a v2 bundle's header lists, as ``git bundle list-heads`` prints them
    (``[oid, refname]``), or None for a header in any other form (v3 capabilities, longer
    than :data:`_HEADER_LIMIT`, a line git would read otherwise): git reads it then."""
    with bundle.open("rb") as file:
        data = file.read(_HEADER_LIMIT)
    end = data.find(b"\n\n")
    if end == -1:
        return None
    signature, *lines = data[:end].split(b"\n")
    if signature != _SIGNATURE:
        return None
    heads: list[list[str]] = []
    for line in lines:
        if line.startswith(b"-"):  # a prerequisite: "-OID[ comment]"
            if not _OID.fullmatch(line[1:].split(b" ", 1)[0]):
                return None
            continue
        oid, space, ref = line.partition(b" ")
        if not space or not _OID.fullmatch(oid) or not ref.startswith(b"refs/"):
            return None
        try:
            heads.append([oid.decode(), ref.decode()])
        except UnicodeDecodeError:
            return None
    return heads


@contextlib.asynccontextmanager
async def git_proc(
    argv: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    *,
    files: int | None = None,
    **pipes: Any,
) -> AsyncIterator[Process]:
    """Host git on the agent's objects (at most :data:`HEAP` of memory; no file it writes
    past ``files`` bytes) in its own process group, killed with its children if the caller
    fails or is cancelled (a timeout must not leave a scan running)."""
    proc = await asyncio.create_subprocess_exec(
        *bounded(HEAP, files), "git", *_GIT_SAFE, *argv, cwd=cwd, start_new_session=True,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/",
             **(env or {})},
        **pipes,
    )  # fmt: skip
    try:
        yield proc
    except BaseException:
        await kill_group_until_gone(proc)
        raise
