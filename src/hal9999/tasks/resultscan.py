"""Reading a fetched result's objects (:mod:`bringback`'s steps 3-4): every object new on the
branch scanned for the values of the task's secrets, and ``result.patch`` rewritten from
them; and the scan of a patch alone, for a source nothing is brought back into."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from hal9999 import agentfs, fs
from hal9999.errors import RepoError, SecretInResult
from hal9999.procs import kill_group_until_gone
from hal9999.redact import SecretMasker
from hal9999.tasks.collect import RESULT_LIMIT
from hal9999.tasks.gitrepo import git_message
from hal9999.tasks.incoming import git_proc
from hal9999.tasks.reviewdiff import DIFF_OPTIONS

_DIFF = ["diff", *DIFF_OPTIONS]
"""The same options the sandbox's patch uses (collect.py)."""
_CHUNK = agentfs.CHUNK
_MATCH_CHUNK = 64 << 10
"""The most text one secret match reads at once. A match is one regular expression call,
which holds the GIL throughout: over the encodings of a few secrets it reads about 12 MB/s
on the benchmark host, so a 1 MiB piece stalled a daemon's event loop (every task, every
client), again and again for as long as an agent's result was (its size is the
agent's to choose); a 64 KiB piece is short."""
_LINE_LIMIT = 4096
"""The most of a ``rev-list --objects`` line (an id and a path) the scan keeps."""
_ENCODING = re.compile(rb"^encoding (.*)$", re.MULTILINE)
_RECODED = ["log", "--no-walk=unsorted", "--stdin", "--pretty=raw", "--encoding=UTF-8",
            "--no-show-signature", "--no-mailmap", "--no-color"]  # fmt: skip
"""Commits as ``git log`` shows them: converted from the encoding their header names."""
_RECODED_BATCH = 4096
"""The most commits of that kind the scan holds before it has git show them: their number
is the agent's to choose, and their ids are in hal's memory until then."""
PATCH_LIMIT = RESULT_LIMIT
"""The largest ``result.patch`` host git writes from the fetched objects (bytes): the
agent's blobs inflate about a thousandfold from a pack (a text blob of 400 MB is some
400 KB of bundle), and the patch is on the host's disk."""


async def _lines(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[bytes]:
    """Each line git prints, cut to :data:`_LINE_LIMIT` bytes (and its newline): a path in
    the agent's trees may be of any length (git refuses none), and a line past the stream's
    limit was a ``ValueError`` that left the task half-collected."""
    pipes = {"stdin": DEVNULL, "stdout": PIPE, "stderr": PIPE}
    async with git_proc(argv, cwd, env, **pipes) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        line = bytearray()
        while chunk := await proc.stdout.read(_CHUNK):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                line += chunk[start : min(end, start + _LINE_LIMIT - len(line))]
                yield bytes(line) + b"\n"
                line.clear()
                start = end + 1
            line += chunk[start : start + _LINE_LIMIT - len(line)]
        if line:
            yield bytes(line) + b"\n"
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise RepoError(f"git {argv[0]} failed: {git_message(err)}")


async def scan(
    repo: Path,
    incoming: str,
    base: str,
    masker: SecretMasker,
    safe: str,
    env: dict[str, str] | None = None,
    record: Path | None = None,
) -> int:
    """Refuse the result when a new object holds a secret's value (streamed, chunked); the
    number of objects scanned, whose ``rev-list --objects`` lines go to the file ``record``
    when given (on disk, not in memory: their number is the agent's to choose)."""
    seen = 0
    if not masker:
        return seen
    listing = _lines(["rev-list", "--objects", incoming, "--not", base], repo, env)
    batch = ["cat-file", "--batch=%(objectname) %(objecttype) %(objectsize) %(rest)"]
    overlap = max(masker.max_len - 1, 0)
    hit: str | None = None
    recoded: list[str] = []  # commits git shows converted from another encoding
    pipes = {"stdin": PIPE, "stdout": PIPE, "stderr": DEVNULL}
    with contextlib.ExitStack() as files:
        kept = files.enter_context(record.open("wb")) if record is not None else None
        async with git_proc(batch, repo, env, **pipes) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            feeder = asyncio.create_task(_feed(proc.stdin, listing, kept))
            try:
                while header := await proc.stdout.readline():
                    fields = header.decode("utf-8", "replace").rstrip("\n").split(" ", 3)
                    name, kind, size, *rest = fields
                    seen += 1
                    where = rest[0] if rest and rest[0] else ""
                    links = _Gitlinks(len(name) // 2) if kind == "tree" else None
                    tail, linked, left = "", "", int(size)
                    utf8 = _utf8()
                    while left > 0:
                        chunk = await proc.stdout.readexactly(min(left, _MATCH_CHUNK))
                        if kind == "commit" and left == int(size) and _recoded(chunk):
                            recoded.append(name)
                        left -= len(chunk)
                        text = tail + utf8.decode(chunk, final=left == 0)
                        if hit is None and masker.spans(text):
                            hit = f"file {where}" if where else f"the {kind} {name[:12]}"
                        await asyncio.sleep(0)  # the loop's turn (a buffered read never yields)
                        tail = text[-overlap:] if overlap else ""
                        if links is not None:
                            ids = linked + links.feed(chunk)
                            if hit is None and masker.spans(ids):
                                place = f"directory {where}" if where else f"tree {name[:12]}"
                                hit = f"a submodule's commit id in {place}"
                            linked = ids[-overlap:] if overlap else ""
                            await asyncio.sleep(0)  # and after this match too
                    await proc.stdout.readexactly(1)  # the newline after each object
                    if len(recoded) >= _RECODED_BATCH:
                        if hit is None:
                            hit = await _recoded_hit(repo, recoded, masker, env)
                        recoded.clear()
            finally:
                if not feeder.done():
                    feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            await proc.wait()
    if hit is None and recoded:
        hit = await _recoded_hit(repo, recoded, masker, env)
    if hit is not None:
        raise SecretInResult(
            f"the result holds the value of one of the task's secrets, in {hit}; "
            "the branch was not brought back",
            hint="the secret must leave the branch's history, not only its last commit: resume "
            "the task and have the agent rewrite its commits without it (for example `git reset "
            f"--soft {base[:12]}` and commit again); {safe}",
        )
    return seen


def _recoded(start: bytes) -> bool:
    """Whether git may show the commit whose raw object begins with ``start`` converted
    from another encoding: it names one other than UTF-8 in an ``encoding`` header, or its
    headers run past ``start``. git converts the whole commit, headers and message, for
    ``log`` and ``show``: a message in UTF-7 (``+AHMAaw-``) is a secret in plain there."""
    end = start.find(b"\n\n")
    if end == -1:
        return True
    found = _ENCODING.finditer(start, 0, end + 1)
    return any(m[1].lower() not in (b"utf-8", b"utf8") for m in found)


async def _recoded_hit(
    repo: Path, commits: list[str], masker: SecretMasker, env: dict[str, str] | None
) -> str | None:
    """Where a secret's value is in ``commits`` as git shows them converted to UTF-8 (one
    git for all of them, matched in pieces with overlap as the objects are), or None."""
    overlap = max(masker.max_len - 1, 0)
    pipes = {"stdin": PIPE, "stdout": PIPE, "stderr": PIPE}
    async with git_proc(_RECODED, repo, env, **pipes) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.create_task(_feed(proc.stdin, _ids(commits), None))
        tail, where, utf8 = "", commits[0], _utf8()
        try:
            while chunk := await proc.stdout.read(_MATCH_CHUNK):
                text = tail + utf8.decode(chunk)
                if spans := masker.spans(text):
                    await kill_group_until_gone(proc)
                    # A message's lines are indented there: git wrote each "commit" line.
                    return f"the commit {_last_after('commit ', text[: spans[0][0]], where)[:12]}"
                where = _last_after("commit ", text, where)
                await asyncio.sleep(0)  # the loop's turn between matches
                tail = text[-overlap:] if overlap else ""
            err = await proc.stderr.read()
        finally:
            if not feeder.done():
                feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        if await proc.wait() != 0:
            raise RepoError(f"git log failed: {git_message(err)}")
    return None


async def _ids(commits: list[str]) -> AsyncIterator[bytes]:
    for commit in commits:
        yield f"{commit}\n".encode()


class _Gitlinks:
    """The commit ids of the submodules (gitlinks) a tree names, in hex, from the tree's raw
    bytes fed in chunks. They are the only bytes of a tree the agent writes freely (any id,
    no such commit needed) and raw they are binary, where ``git ls-tree``, ``git show`` and
    the patch print them as hex: a secret of hex digits hid there from the scan."""

    def __init__(self, id_bytes: int) -> None:
        self._size = id_bytes
        self._mode = b""  # the last six digits: git's file type is in them
        self._in_name = False
        self._id = b""
        self._reading_id = False

    def feed(self, chunk: bytes) -> str:
        """The gitlinks' ids the entries ending in ``chunk`` hold, each on a line."""
        found, at = [], 0
        while at < len(chunk):
            if self._reading_id:
                take = chunk[at : at + self._size - len(self._id)]
                self._id += take
                at += len(take)
                if len(self._id) == self._size:
                    if _is_gitlink(self._mode):
                        found.append(self._id.hex() + "\n")
                    self._reading_id, self._mode, self._id = False, b"", b""
            elif self._in_name:  # the name may be of any length: never kept
                end = chunk.find(b"\0", at)
                if end == -1:
                    break
                self._in_name, self._reading_id, at = False, True, end + 1
            else:
                end = chunk.find(b" ", at)
                self._mode = (self._mode + chunk[at : len(chunk) if end == -1 else end])[-6:]
                if end == -1:
                    break
                self._in_name, at = True, end + 1
        return "".join(found)


def _is_gitlink(mode: bytes) -> bool:
    """Whether a tree entry's mode is a gitlink's as git reads it: octal digits, the file type
    in the last six (``0160000`` and ``160644`` are gitlinks too, which git's object checks
    only warn about, and which ``git ls-tree`` prints as ``160000``)."""
    try:
        return int(mode, 8) & 0o170000 == 0o160000
    except ValueError:
        return False


def patch_holds_secret(patch: Path, masker: SecretMasker) -> str | None:
    """The first ``+++ b/<file>`` whose added text holds a secret's value, streamed in chunks
    with overlap; ``"result.patch"`` when the hit is before any file header; None when clean."""
    if not masker:
        return None
    overlap = max(masker.max_len - 1, 0)
    where, tail = "result.patch", ""
    utf8 = _utf8()
    with patch.open("rb") as source:
        while chunk := source.read(_MATCH_CHUNK):  # in a thread, but a match holds the GIL
            text = tail + utf8.decode(chunk)
            spans = masker.spans(text)
            # The file a hit belongs to is the last header before it.
            where = _last_after("+++ b/", text[: spans[0][0]] if spans else text, where)
            if spans:
                return where
            tail = text[-overlap:] if overlap else ""
    return None


def _utf8() -> codecs.IncrementalDecoder:
    """A decoder for text read in pieces: a character split between two pieces is decoded
    whole. Each piece decoded alone made it two U+FFFD, so a secret with a non-ASCII
    character the agent placed across a piece's end (at a multiple of 64 KiB) was not
    found, and its branch came back."""
    return codecs.getincrementaldecoder("utf-8")("replace")


def _last_after(prefix: str, text: str, default: str) -> str:
    """The rest of the last line of ``text`` that starts with ``prefix`` (a patch's
    ``+++ b/<file>``, ``log --pretty=raw``'s ``commit <id>``: where a hit is), else
    ``default``."""
    at = text.rfind("\n" + prefix)
    start = at + 1 if at != -1 else (0 if text.startswith(prefix) else -1)
    if start == -1:
        return default
    end = text.find("\n", start)
    return text[start + len(prefix) : end if end != -1 else len(text)]


async def _feed(
    stdin: asyncio.StreamWriter, listing: AsyncIterator[bytes], kept: BinaryIO | None
) -> None:
    try:
        async for line in listing:
            if kept is not None:
                kept.write(line)
            stdin.write(line)
            await stdin.drain()
    finally:
        stdin.close()


async def write_patch(
    repo: Path, base: str, incoming: str, patch: Path, env: dict[str, str] | None = None
) -> None:
    """Rewrite ``result.patch`` from the fetched objects (streamed, fsynced, replaced)."""
    limit = PATCH_LIMIT
    # Fsynced here, off the event loop (fs.atomic's own would block it).
    with fs.atomic(patch, mode=None, durable=False) as out:
        argv = [*_DIFF, base, incoming, "--"]
        pipes = {"stdin": DEVNULL, "stdout": out.fd, "stderr": PIPE}
        async with git_proc(argv, repo, env, files=limit, **pipes) as proc:
            _, err = await proc.communicate()
        # Past the limit git is killed (SIGXFSZ) or told EFBIG: the file is full.
        if proc.returncode != 0 and os.fstat(out.fd).st_size >= limit:
            raise RepoError(
                f"the branch's diff is larger than {limit} bytes; nothing was brought back",
                hint="the work is in the task's session checkout; leave generated or very "
                "large files out of the branch",
            )
        if proc.returncode != 0:
            raise RepoError(f"writing the patch failed: {git_message(err)}")
        await asyncio.to_thread(os.fsync, out.fd)
    await asyncio.to_thread(fs.fsync_dir, patch.parent)
