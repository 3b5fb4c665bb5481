"""Bringing a task's branch back into a local source repository, from the verified bundle.

The bundle is the session's own copy (``result.bundle``, copied by fd out of the agent's
home), a plain file, so fetching from it cannot borrow objects from another repository the
way an agent-built repository with ``objects/info/alternates`` could. Before any branch of
the user's moves:

1. ``git bundle verify`` (prerequisites present), and its only head must be the task branch
   at the head collection reported;
2. the fetch goes into a private ref (``refs/hal-incoming/<id>``) with every transport but
   the bundle file refused and objects checked, so a branch named ``hal`` cannot break it;
3. every object new on the branch (file contents, commit messages) is scanned for the
   values of the task's secrets; a hit brings nothing back and says which file holds it;
4. ``result.patch`` is rewritten from the fetched objects, so it is exactly the branch's
   diff against the base;
5. the branch moves only from where hal last left it (compare-and-set): a branch the user
   changed is kept and the result lands on ``hal/<id>-<n>`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from asyncio.subprocess import DEVNULL, PIPE, Process
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal9999 import agentfs
from hal9999.errors import RepoError, SecretInResult
from hal9999.procs import kill_group_until_gone
from hal9999.redact import SecretMasker
from hal9999.tasks.collect import RESULT_LIMIT, safe_in_session
from hal9999.tasks.gitrepo import _GIT_SAFE, RepoSource, bounded, git, git_message
from hal9999.tasks.session import Session

_ZERO = "0" * 40
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
# The same options the sandbox's patch uses (collect.py), pinned against the repository's
# own diff settings (noprefix, external drivers, colour).
_DIFF = ["diff", "--binary", "--no-ext-diff", "--no-textconv", "--no-color"]
_DIFF_FIXED = ["--src-prefix=a/", "--dst-prefix=b/"]
_CANDIDATES = 9
_CHUNK = agentfs.CHUNK
HEAP = RESULT_LIMIT
"""The most memory host git may allocate while it reads the agent's objects (the fetch with
its ``index-pack``, the scan, the patch, the copy into the source): the bundle is the agent's,
and a zlib bomb in it, a blob or commit of gigabytes in kilobytes, is inflated whole outside
any sandbox's memory limit (a 3 GiB blob hidden from the sandbox's own diff by a replace ref
took 3 GiB of the host's). Past it git fails and nothing is brought back."""


@dataclass(frozen=True)
class BroughtBack:
    """Where the result landed in the source repository."""

    branch: str
    head: str
    moved_aside: bool
    """True when the result is not on the task's own branch (see ``why``)."""
    why: str = ""
    """Why the task's own branch was left alone (the user moved it, or a ref is in the way)."""


async def bring_back(
    source: RepoSource,
    session: Session,
    *,
    task_id: str,
    branch: str,
    head: str,
    base: str,
    masker: SecretMasker,
) -> BroughtBack | None:
    """Verify the bundle, scan it for secrets and move a branch of a local source to ``head``."""
    if source.kind != "local":
        return None
    repo = Path(source.location)
    safe = safe_in_session(session)
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise RepoError(f"the source repository {repo} is gone or moved", hint=safe)
    incoming = f"refs/hal-incoming/{task_id}"
    # With secrets to look for, the bundle's objects go into a quarantine first (an object
    # directory of the session's that borrows the source's, and no ref): the bundle is the
    # agent's, and objects none of its commits reach are never scanned, so only what the scan
    # saw is copied into the source (whose later snapshots every sandbox reads).
    quarantine = session.root / QUARANTINE if head != base and masker else None
    drop = _Drop(incoming if head != base and quarantine is None else None)
    try:
        if head != base:
            env: dict[str, str] | None = None
            target = incoming
            if quarantine is not None:
                objects = await _objects_dir(repo)
                await asyncio.to_thread(_fresh_dir, quarantine)
                env = {
                    "GIT_OBJECT_DIRECTORY": str(quarantine),
                    "GIT_ALTERNATE_OBJECT_DIRECTORIES": _alternate(objects),
                }
                target = head
            await _fetch_verified(repo, session.bundle, branch, head, target, safe, env)
            seen = await _scan(repo, target, base, masker, safe, env)
            await _write_patch(repo, base, target, session.patch, env)
            if env is not None and seen:
                await git(
                    ["pack-objects", "--quiet", "--local", str(objects / "pack" / "pack")],
                    cwd=repo, stdin=b"".join(seen), env=env, what="keeping the result",
                    hint=safe, heap=HEAP,
                )  # fmt: skip
        return await _move_branch(repo, session, branch, head, safe, drop)
    finally:
        if drop.ref is not None and not drop.done:
            await git(["update-ref", "-d", incoming], cwd=repo, what="dropping the private ref")
        if quarantine is not None:
            await asyncio.to_thread(shutil.rmtree, quarantine, True)


async def forget_incoming(source: RepoSource, task_id: str) -> None:
    """Drop what a bring-back cut short (its ``hal`` killed between the fetch and the branch's
    move) left in a local source: ``refs/hal-incoming/<id>``, which keeps the fetched result's
    objects until the task is resumed (that lands them) or removed (this)."""
    repo = Path(source.location)
    if source.kind != "local" or not repo.is_dir():
        return
    with contextlib.suppress(RepoError):  # a source that is no repository now holds no ref
        await git(
            ["update-ref", "-d", f"refs/hal-incoming/{task_id}"],
            cwd=repo, what="dropping the private ref",
        )  # fmt: skip


QUARANTINE = "incoming-objects"
"""In the session root (no sandbox mounts it): where a result's objects wait for the scan."""


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


async def _fetch_verified(
    repo: Path,
    bundle: Path,
    branch: str,
    head: str,
    incoming: str,
    safe: str,
    env: dict[str, str] | None = None,
) -> None:
    """Fetch the bundle's one head into ``incoming`` (a ref; or, with ``env`` naming a
    quarantine, ``incoming`` is ``head`` and no ref is written)."""
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
    fetched = await git(["rev-parse", "--verify", f"{incoming}^{{commit}}"], cwd=repo, env=env)
    if fetched != head:
        raise RepoError(f"the fetched result is {fetched[:12]}, not {head[:12]}", hint=safe)


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
async def _git_proc(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, **pipes: Any
) -> AsyncIterator[Process]:
    """Host git on the agent's objects (at most :data:`HEAP` of memory) in its own process
    group, killed with its children if the caller fails or is cancelled (a timeout must not
    leave a scan running)."""
    proc = await asyncio.create_subprocess_exec(
        *bounded(HEAP), "git", *_GIT_SAFE, *argv, cwd=cwd, start_new_session=True,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/",
             **(env or {})},
        **pipes,
    )  # fmt: skip
    try:
        yield proc
    except BaseException:
        await kill_group_until_gone(proc)
        raise


async def _lines(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[bytes]:
    pipes = {"stdin": DEVNULL, "stdout": PIPE, "stderr": PIPE}
    async with _git_proc(argv, cwd, env, **pipes) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while line := await proc.stdout.readline():
            yield line
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise RepoError(f"git {argv[0]} failed: {git_message(err)}")


async def _scan(
    repo: Path,
    incoming: str,
    base: str,
    masker: SecretMasker,
    safe: str,
    env: dict[str, str] | None = None,
) -> list[bytes]:
    """Refuse the result when a new object holds a secret's value (streamed, chunked); the
    ``rev-list --objects`` lines of the objects scanned."""
    seen: list[bytes] = []
    if not masker:
        return seen
    listing = _lines(["rev-list", "--objects", incoming, "--not", base], repo, env)
    batch = ["cat-file", "--batch=%(objectname) %(objecttype) %(objectsize) %(rest)"]
    overlap = max(masker.max_len - 1, 0)
    hit: str | None = None
    pipes = {"stdin": PIPE, "stdout": PIPE, "stderr": DEVNULL}
    async with _git_proc(batch, repo, env, **pipes) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        feeder = asyncio.create_task(_feed(proc.stdin, listing, seen))
        try:
            while header := await proc.stdout.readline():
                fields = header.decode("utf-8", "replace").rstrip("\n").split(" ", 3)
                name, kind, size, *rest = fields
                tail, left = "", int(size)
                while left > 0:
                    chunk = await proc.stdout.readexactly(min(left, _CHUNK))
                    left -= len(chunk)
                    text = tail + chunk.decode("utf-8", "replace")
                    if hit is None and masker.spans(text):
                        where = rest[0] if rest and rest[0] else ""
                        hit = f"file {where}" if where else f"the {kind} {name[:12]}"
                    tail = text[-overlap:] if overlap else ""
                await proc.stdout.readexactly(1)  # the newline after each object
        finally:
            if not feeder.done():
                feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        await proc.wait()
    if hit is not None:
        raise SecretInResult(
            f"the result holds the value of one of the task's secrets, in {hit}; "
            "the branch was not brought back",
            hint="the secret must leave the branch's history, not only its last commit: resume "
            "the task and have the agent rewrite its commits without it (for example `git reset "
            f"--soft {base[:12]}` and commit again); {safe}",
        )
    return seen


def patch_holds_secret(patch: Path, masker: SecretMasker) -> str | None:
    """The first ``+++ b/<file>`` whose added text holds a secret's value, streamed in chunks
    with overlap; ``"result.patch"`` when the hit is before any file header; None when clean."""
    if not masker:
        return None
    overlap = max(masker.max_len - 1, 0)
    where, tail = "result.patch", ""
    with patch.open("rb") as source:
        while chunk := source.read(_CHUNK):
            text = tail + chunk.decode("utf-8", "replace")
            spans = masker.spans(text)
            # The file a hit belongs to is the last header before it.
            where = _last_header(text[: spans[0][0]] if spans else text, where)
            if spans:
                return where
            tail = text[-overlap:] if overlap else ""
    return None


def _last_header(text: str, default: str) -> str:
    at = text.rfind("\n+++ b/")
    start = at + 1 if at != -1 else (0 if text.startswith("+++ b/") else -1)
    if start == -1:
        return default
    end = text.find("\n", start)
    return text[start + len("+++ b/") : end if end != -1 else len(text)]


async def _feed(
    stdin: asyncio.StreamWriter, listing: AsyncIterator[bytes], seen: list[bytes]
) -> None:
    try:
        async for line in listing:
            seen.append(line)
            stdin.write(line)
            await stdin.drain()
    finally:
        stdin.close()


async def _write_patch(
    repo: Path, base: str, incoming: str, patch: Path, env: dict[str, str] | None = None
) -> None:
    """Rewrite ``result.patch`` from the fetched objects (streamed, fsynced, replaced)."""
    tmp = patch.with_name(f".{patch.name}.hal-tmp")
    with tmp.open("wb") as out:
        argv = [*_DIFF, *_DIFF_FIXED, base, incoming, "--"]
        async with _git_proc(argv, repo, env, stdin=DEVNULL, stdout=out, stderr=PIPE) as proc:
            _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RepoError(f"writing the patch failed: {git_message(err)}")
        await asyncio.to_thread(os.fsync, out.fileno())
    tmp.replace(patch)
    await asyncio.to_thread(agentfs.fsync_dir, patch.parent)


def _load_record(session: Session) -> dict[str, str]:
    try:
        data = json.loads(session.brought_back.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _candidates(branch: str) -> list[list[str]]:
    """Names to try, in families: ``hal/<id>``, ``hal/<id>-2``..., then ``hal-<id>``... for a
    repository where a branch ``hal`` makes every ``hal/...`` impossible."""
    flat = branch.replace("/", "-")
    families = [branch, flat] if flat != branch else [branch]
    return [[name] + [f"{name}-{n}" for n in range(2, _CANDIDATES + 1)] for name in families]


async def _current(repo: Path, name: str) -> str | None:
    try:
        return await git(["rev-parse", "--verify", "--quiet", f"refs/heads/{name}"], cwd=repo)
    except RepoError:
        return None


@dataclass
class _Drop:
    """The private ref to delete in the same transaction that moves the branch (one git,
    issue 16); ``done`` once it is gone."""

    ref: str | None
    done: bool = False


async def _set_ref(repo: Path, name: str, head: str, old: str, drop: _Drop, what: str) -> None:
    """Point ``refs/heads/NAME`` at ``head`` if it is at ``old`` (zero: if there is none),
    dropping ``drop.ref`` in the same transaction (all or nothing)."""
    ref = f"refs/heads/{name}"
    if drop.ref is None:
        await git(
            ["update-ref", "-m", "hal: task result", "--end-of-options", ref, head, old],
            cwd=repo, what=what,
        )  # fmt: skip
        return
    script = f"update {ref}\0{head}\0{old}\0delete {drop.ref}\0\0"
    await git(
        ["update-ref", "-m", "hal: task result", "--stdin", "-z"],
        cwd=repo, what=what, stdin=script.encode(),
    )  # fmt: skip
    drop.done = True


async def _create(repo: Path, name: str, head: str, drop: _Drop) -> bool:
    """Create branch ``name`` at ``head`` only if no such branch exists (compare-and-set
    against none); False when it exists or a ref is in the way (then it is read)."""
    try:
        await _set_ref(repo, name, head, _ZERO, drop, f"creating branch {name}")
    except RepoError:
        return False
    return True


async def _move_branch(
    repo: Path, session: Session, branch: str, head: str, safe: str, drop: _Drop
) -> BroughtBack:
    record = _load_record(session)
    last_error = ""
    why = ""
    for family in _candidates(branch):
        for name in family:
            if name not in record and await _create(repo, name, head, drop):
                # A name hal never moved, created where none was: one git (issue 16).
                return await _landed(session, record, name, branch, head, why)
            current = await _current(repo, name)
            if current is not None and current != head and current != record.get(name):
                why = why or f"{branch} was changed outside hal and is left as it is"
                continue  # someone else's commits: never move it
            if current != head:
                try:
                    what = f"creating branch {name}"
                    await _set_ref(repo, name, head, current or _ZERO, drop, what)
                except RepoError as exc:
                    last_error = exc.message
                    # A ref in the way of the whole family (e.g. a branch `hal`).
                    why = f"the source repository cannot hold {name} ({exc.message})"
                    break
            return await _landed(session, record, name, branch, head, why)
    raise RepoError(
        f"cannot create a branch for the result in {repo}: {last_error or 'every name is taken'}",
        hint=safe,
    )


async def _landed(
    session: Session, record: dict[str, str], name: str, branch: str, head: str, why: str
) -> BroughtBack:
    """Remember that hal left ``name`` at ``head`` (the next run's compare-and-set)."""
    record[name] = head
    data = json.dumps(record, indent=1).encode()
    await asyncio.to_thread(agentfs.write_host_file, session.brought_back, iter([data]))
    return BroughtBack(name, head, moved_aside=name != branch, why=why)
