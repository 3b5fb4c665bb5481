"""Results an agent shaped against the host's side of bringing them back: its trees, its
history and its diff are the agent's to choose, and the host reads all of them."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import pytest
from tests.support.bringback import (
    World,
    blob,
    cloned_world,
    commit_tree,
    has_object,
    loose_bomb,
    mktree,
)
from tests.tasks.conftest import BRANCH, git

from hal9999.errors import RepoError, SecretInResult
from hal9999.redact import SecretMasker
from hal9999.tasks import landing, resultscan


@pytest.fixture
async def world(tmp_path: Path) -> World:
    return await cloned_world(tmp_path)


SECRET = "sk-live-7f3a9c2e1b"


@pytest.mark.parametrize("secret", [False, True])
async def test_a_path_longer_than_a_stream_line_is_scanned_and_named(
    world: World, secret: bool
) -> None:
    # A directory name of 70,000 bytes (past asyncio's 64 KiB line limit) made the scan's
    # listing raise ValueError: an internal error, the task left half-collected (shown
    # "interrupted"), and the same on every resume.
    ws = world.session.workspace
    name = "n" * 70_000
    inner = mktree(ws, [("100644", blob(ws, f"KEY={SECRET if secret else 'none'}\n"), "env")])
    head = commit_tree(world, [("040000", inner, name)])
    masker = SecretMasker([SECRET])
    if secret:
        with pytest.raises(SecretInResult) as caught:
            await world.bring_back(head, masker)
        assert "file nnnn" in caught.value.message
        assert len(caught.value.message) < 5000  # the name is cut, never copied whole
        assert git(world.source, "branch", "--list", BRANCH) == ""
    else:
        brought = await world.bring_back(head, masker)
        assert isinstance(brought, landing.BroughtBack)
        assert git(world.source, "rev-parse", f"{BRANCH}:{name}/env") == git(
            ws, "rev-parse", f"{head}:{name}/env"
        )
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""


async def test_the_objects_scanned_are_listed_on_disk_not_in_hals_memory(world: World) -> None:
    # Every `rev-list --objects` line (an id and the object's whole path) was kept in a list
    # until the objects were packed into the source: 4,000 blobs under a 4,000-byte path
    # cost 16 MB of hal's own memory (not git's, under no bound) for a bundle of ~100 KB.
    ws = world.session.workspace
    ids = loose_blobs(ws, [f"{n}\n".encode() for n in range(4000)])
    deep = "d" * 4000
    inner = mktree(ws, [("100644", oid, f"f{n}") for n, oid in enumerate(ids)])
    head = commit_tree(world, [("040000", inner, deep)])
    assert world.session.bundle.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        await world.bring_back(head, SecretMasker([SECRET]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert git(world.source, "rev-parse", f"{BRANCH}:{deep}/f7") == ids[7]
    assert peak < 4 << 20, peak


def loose_blobs(repo: Path, contents: list[bytes]) -> list[str]:
    """Blobs written straight into ``repo``'s objects (one git for thousands would be
    fast-import; these are a few bytes each); their ids."""
    ids = []
    for data in contents:
        raw = b"blob %d\0" % len(data) + data
        oid = hashlib.sha1(raw).hexdigest()
        loose = repo / ".git" / "objects" / oid[:2] / oid[2:]
        loose.parent.mkdir(exist_ok=True)
        loose.write_bytes(zlib.compress(raw))
        ids.append(oid)
    return ids


def text_bomb(repo: Path, size: int, seed: bytes) -> str:
    """A loose text blob of ``size`` bytes in lines of 1 KiB (a few kilobytes on disk); its
    id. Text, so the patch carries it whole."""
    return loose_bomb(repo, size, (seed + b"x" * (1023 - len(seed)) + b"\n") * 1024)


@pytest.mark.parametrize("masked", [False, True])  # fetched into the source, or quarantined
async def test_a_patch_that_inflates_past_the_bound_is_refused_not_written(
    world: World, monkeypatch: pytest.MonkeyPatch, masked: bool
) -> None:
    # Host git rewrote result.patch from the fetched objects with no bound: 4 text blobs of
    # 64 MiB made a 275 MB patch on the host's disk from a 196 KB bundle (and a delta against
    # such a blob costs a few bytes more for each further copy).
    ws = world.session.workspace
    for n in range(2):
        oid = text_bomb(ws, 12 << 20, b"%d" % n)
        git(ws, "update-index", "--add", "--cacheinfo", f"100644,{oid},big{n}.txt")
    git(ws, "commit", "-qm", "agent work")
    head = git(ws, "rev-parse", "HEAD")
    world.bundle()
    assert world.session.bundle.stat().st_size < 1 << 20
    monkeypatch.setattr(resultscan, "PATCH_LIMIT", 4 << 20, raising=False)
    masker = SecretMasker([SECRET] if masked else [])
    with pytest.raises(RepoError, match="diff is larger than 4194304 bytes"):
        await world.bring_back(head, masker)
    assert git(world.source, "branch", "--list", BRANCH) == ""
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""
    assert sorted(p.name for p in world.session.root.iterdir() if "patch" in p.name) == []
    monkeypatch.setattr(resultscan, "PATCH_LIMIT", 32 << 20, raising=False)  # room: brought back
    await world.bring_back(head, masker)
    assert git(world.source, "rev-parse", BRANCH) == head
    assert world.session.patch.stat().st_size > 24 << 20


HEX_SECRET = "3f9a1c7e5b2d4086a1f3c5e7d9b0a2c4e6f8d0b1"  # 40 hex digits, as many tokens are


@pytest.mark.parametrize("chunk", [resultscan._MATCH_CHUNK, 7])  # each entry split across reads
@pytest.mark.parametrize("where", ["tip", "history", "split", "0160000", "160644"])
async def test_a_hex_secret_as_a_submodules_commit_id_is_found(
    world: World, monkeypatch: pytest.MonkeyPatch, where: str, chunk: int
) -> None:
    # A gitlink names any commit id, no such commit needed, and its tree holds the id as 20
    # raw bytes, which the scan read as text: `git ls-tree` on the brought-back branch
    # printed the secret. Collection in the sandbox reports a new gitlink as nested work,
    # but one added and removed again leaves no trace in the diff it reads.
    ws = world.session.workspace
    secret = HEX_SECRET + "0a1b2c3d4e5f6a7b" if where == "split" else HEX_SECRET
    if where == "split":  # 56 digits: the first 40 in one gitlink, the rest in the next
        links = [("160000", secret[:40], "m1"), ("160000", secret[40:] + "0" * 24, "m2")]
    else:
        links = [("160000", secret, "vendor")]
    if where in ("0160000", "160644"):  # modes git reads as a gitlink's (its checks warn)
        a = git(ws, "rev-parse", "HEAD:a.txt")
        raw = b"100644 a.txt\0" + bytes.fromhex(a) + where.encode() + b" m\0"
        top = subprocess.run(
            ["git", "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
            cwd=ws, input=raw + bytes.fromhex(secret), capture_output=True, check=True,
        ).stdout.decode().strip()  # fmt: skip
        assert f"160000 commit {secret}\tm" in git(ws, "ls-tree", top)
        head = git(ws, "commit-tree", top, "-p", "HEAD", "-m", "agent work")
        git(ws, "update-ref", f"refs/heads/{BRANCH}", head)
        world.bundle()
    else:
        head = commit_tree(world, links)
    if where == "history":
        git(ws, "update-ref", f"refs/heads/{BRANCH}", head)
        git(ws, "read-tree", world.base)
        head = git(ws, "commit-tree", git(ws, "write-tree"), "-p", head, "-m", "drop it")
        git(ws, "update-ref", f"refs/heads/{BRANCH}", head)
        world.session.bundle.unlink()
        world.bundle()
    monkeypatch.setattr(resultscan, "_MATCH_CHUNK", chunk)
    with pytest.raises(SecretInResult, match="a submodule's commit id") as caught:
        await world.bring_back(head, SecretMasker([secret]))
    assert secret not in caught.value.one_line()
    assert git(world.source, "branch", "--list", BRANCH) == ""
    assert not any(
        has_object(world.source, oid)
        for oid in git(ws, "rev-list", f"{world.base}..{head}").split()
    )


async def test_a_large_result_is_matched_in_pieces_the_loop_runs_between(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The secret scan matched each 1 MiB read in one regular expression call, on the event
    # loop, holding the GIL, so a large result (its size
    # the agent's to choose) stalled every task and client of a daemon again and again. Each
    # match now reads a bounded piece, and the loop gets its turn between pieces.
    ws = world.session.workspace
    (ws / "big.txt").write_text(("y" * 1023 + "\n") * 4096)  # 4 MiB of text
    git(ws, "add", "big.txt")
    git(ws, "commit", "-qm", "agent work")
    head = git(ws, "rev-parse", "HEAD")
    world.bundle()
    masker = SecretMasker([SECRET])
    sizes: list[int] = []
    ticks: list[int] = []
    ticked = 0
    original = masker.spans

    def spans(text: str) -> list[tuple[int, int]]:
        sizes.append(len(text))
        ticks.append(ticked)
        return original(text)

    async def ticker() -> None:
        nonlocal ticked
        while True:
            ticked += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(masker, "spans", spans)
    beat = asyncio.create_task(ticker())
    try:
        await world.bring_back(head, masker)
    finally:
        beat.cancel()
    assert git(world.source, "rev-parse", BRANCH) == head
    assert sum(sizes) >= 4 << 20 and max(sizes) < resultscan._MATCH_CHUNK + masker.max_len
    assert all(b > a for a, b in itertools.pairwise(ticks)), "the loop ran between"
    sizes.clear()
    assert resultscan.patch_holds_secret(world.session.patch, masker) is None
    assert sum(sizes) >= 4 << 20 and max(sizes) < resultscan._MATCH_CHUNK + masker.max_len


UTF8_SECRET = "pä-sk-live-7f3a9c2e1b"
"""A secret with a non-ASCII character (two bytes in UTF-8)."""


async def test_a_secret_split_at_a_reads_end_inside_a_character_is_found(
    world: World, tmp_path: Path
) -> None:
    # Each 64 KiB piece was decoded alone: the agent put the secret's "ä" across a piece's
    # end, both halves became U+FFFD, and the scan let the branch come back.
    at = resultscan._MATCH_CHUNK - 2  # "p" is the piece's last byte but one, "ä" straddles
    ws = world.session.workspace
    (ws / "notes.txt").write_text("x" * at + UTF8_SECRET + "\n")
    git(ws, "add", "notes.txt")
    git(ws, "commit", "-qm", "agent work")
    world.bundle()
    masker = SecretMasker([UTF8_SECRET])
    with pytest.raises(SecretInResult, match=r"file notes\.txt"):
        await world.bring_back(git(ws, "rev-parse", "HEAD"), masker)
    assert git(world.source, "branch", "--list", BRANCH) == ""
    head = b"+++ b/notes.txt\n"
    patch = tmp_path / "result.patch"
    patch.write_bytes(head + b"+" * (at - len(head)) + UTF8_SECRET.encode() + b"\n")
    assert resultscan.patch_holds_secret(patch, masker) == "notes.txt"


@pytest.mark.parametrize(
    "name",
    [
        ".GIT",
        "git~1",
        ".git\u200c",
        ".Git\u200d",
        "GIT~1",
        "..",
        ".git::$INDEX_ALLOCATION",
        ".git. . ",
    ],
)
async def test_a_tree_holding_a_git_directory_in_another_spelling_is_refused(
    world: World, name: str
) -> None:
    # A directory a checkout on a case-insensitive (macOS, Windows), NTFS or HFS+ filesystem
    # takes for `.git` (its hooks run by the operator's next git there), or `..`: the fetch's
    # object checks do not reach a bundle (git 2.39), and the branch was brought back.
    ws = world.session.workspace
    hook = blob(ws, "#!/bin/sh\ntouch /tmp/pwned\n")
    hooks = mktree(ws, [("100755", hook, "post-checkout")])
    head = commit_tree(world, [("040000", mktree(ws, [("040000", hooks, "hooks")]), name)])
    with pytest.raises(RepoError) as refused:
        await world.bring_back(head)
    assert "objects git's checks refuse" in refused.value.message
    assert git(world.source, "for-each-ref", "refs/heads/hal/", "refs/hal-incoming/") == ""
    # With secrets to look for (the objects in a quarantine): refused the same.
    masker = SecretMasker(["some-secret-value"])
    with pytest.raises(RepoError):
        await world.bring_back(head, masker)
    assert git(world.source, "for-each-ref", "refs/heads/hal/", "refs/hal-incoming/") == ""


def raw_commit(world: World, headers: str, message: bytes) -> str:
    """A commit on the task's branch written byte for byte: the base's tree, ``headers``
    after the committer's line, and ``message``."""
    ws = world.session.workspace
    tree, parent = git(ws, "rev-parse", "HEAD^{tree}"), git(ws, "rev-parse", "HEAD")
    who = "a <a@a> 1 -0000"  # no '+': it would open a UTF-7 shift in the header too
    head = f"tree {tree}\nparent {parent}\nauthor {who}\ncommitter {who}\n{headers}\n"
    made = subprocess.run(
        ["git", "hash-object", "-t", "commit", "-w", "--stdin"], cwd=ws,
        input=head.encode() + message, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    git(ws, "update-ref", f"refs/heads/{BRANCH}", made)
    world.bundle()
    return made


def utf7(text: str) -> bytes:
    """``text`` in UTF-7 with every character shifted: no byte of it reads as ``text``."""
    import base64

    return b"+" + base64.b64encode(text.encode("utf-16-be")).rstrip(b"=") + b"-"


@pytest.mark.parametrize("where", ["message", "long headers"])
async def test_a_secret_git_shows_converted_from_a_commits_encoding_is_found(
    world: World, where: str
) -> None:
    # A commit naming another encoding is converted by git for `log` and `show`, headers and
    # message: a message in UTF-7 is the secret in plain there, while its bytes hold none of
    # the forms the scan knows, and the branch came back. Headers longer than the piece the
    # scan reads first hide the `encoding` line from its look: git is asked then too.
    pad = "x-pad " + "p" * (resultscan._MATCH_CHUNK + 10) + "\n" if where == "long headers" else ""
    head = raw_commit(world, f"{pad}encoding UTF-7\n", b"fix: " + utf7(SECRET) + b"\n")
    assert SECRET in git(world.session.workspace, "log", "-1", "--format=%B", head)
    with pytest.raises(SecretInResult, match=f"the commit {head[:12]}") as caught:
        await world.bring_back(head, SecretMasker([SECRET]))
    assert SECRET not in caught.value.one_line()
    assert git(world.source, "for-each-ref", "refs/heads/hal/", "refs/hal-incoming/") == ""
    assert not has_object(world.source, head)


async def test_commits_git_shows_as_written_take_no_git_of_their_own(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a commit that names another encoding (or whose headers the scan's first piece
    # does not hold) takes the `git log` of the check above; one converted from Latin-1
    # without a secret comes back.
    asked: list[list[str]] = []
    check = resultscan._recoded_hit

    async def counted(repo: Path, commits: list[str], *args: object) -> str | None:
        asked.append(commits)
        return await check(repo, commits, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(resultscan, "_recoded_hit", counted)
    masker = SecretMasker([SECRET])
    plain = world.agent_commits({"a.txt": "two\n"}, message="plain work")
    declared = raw_commit(world, "encoding UTF-8\n", "caf\u00e9 fix\n".encode())
    await world.bring_back(declared, masker)
    assert asked == []
    head = raw_commit(world, "encoding ISO-8859-1\n", "caf\u00e9 fix\n".encode("latin-1"))
    await world.bring_back(head, masker)
    assert asked == [[head]]
    assert git(world.source, "rev-parse", BRANCH) == head
    assert plain in git(world.source, "rev-list", head)


async def test_commits_to_show_converted_are_held_a_batch_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Their number is the agent's: their ids went whole into hal's memory before git was
    # asked. The secret in the first of five commits (listed last) is found in the third.
    asked: list[int] = []
    check = resultscan._recoded_hit

    async def counted(repo: Path, commits: list[str], *args: object) -> str | None:
        asked.append(len(commits))
        return await check(repo, commits, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(resultscan, "_recoded_hit", counted)
    monkeypatch.setattr(resultscan, "_RECODED_BATCH", 2)
    for n in range(5):
        text = utf7(SECRET) if n == 0 else b"clean"
        head = raw_commit(world, "encoding UTF-7\n", b"step %d: %s\n" % (n, text))
    with pytest.raises(SecretInResult, match="the commit"):
        await world.bring_back(head, SecretMasker([SECRET]))
    assert asked == [2, 2, 1]
