"""Bringing a result back into the source repository: only from a verified bundle, never over
the user's commits, never with a secret in it, whatever the source repository's branches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.support.bringback import World, cloned_world, has_object, loose_bomb
from tests.tasks.conftest import BRANCH, TASK, git, make_repo

from hal9999.errors import RepoError, SecretInResult
from hal9999.redact import SecretMasker
from hal9999.tasks import bringback, gitrepo, incoming, landing, resultscan


@pytest.fixture
async def world(tmp_path: Path) -> World:
    return await cloned_world(tmp_path)


async def test_brings_back_and_rewrites_the_patch_from_the_fetched_objects(world: World) -> None:
    head = world.agent_commits({"a.txt": "two\n"})
    world.bundle()
    world.session.patch.write_text("a patch that lies\n")
    brought = await world.bring_back(head)
    assert isinstance(brought, landing.BroughtBack)
    assert (brought.branch, brought.moved_aside) == (BRANCH, False)
    assert git(world.source, "rev-parse", BRANCH) == head
    expected = subprocess.run(
        ["git", "diff", "--binary", world.base, BRANCH], cwd=world.source, capture_output=True
    ).stdout
    assert world.session.patch.read_bytes() == expected
    assert "+two" in world.session.patch.read_text()
    # The private ref is gone; only the task branch changed.
    assert git(world.source, "for-each-ref", "--format=%(refname)") == (
        f"refs/heads/{BRANCH}\nrefs/heads/main"
    )


async def test_an_agent_built_repository_with_alternates_is_never_fetched(
    world: World, tmp_path: Path
) -> None:
    """The bundle path leads to an agent-made repository that borrows a private host
    repository's objects through objects/info/alternates."""
    private = tmp_path / "private"
    secret_commit = make_repo(private, {"key.txt": "private key\n"})
    evil = world.session.home / "evil.git"
    git(world.session.home, "init", "-q", "--bare", str(evil))
    (evil / "objects" / "info" / "alternates").write_text(f"{private}/.git/objects\n")
    (evil / "refs" / "heads" / "hal").mkdir(parents=True)
    (evil / "refs" / "heads" / BRANCH).write_text(secret_commit + "\n")
    world.session.bundle.symlink_to(evil)  # what the old move left for the next run
    with pytest.raises(RepoError) as caught:
        await world.bring_back(secret_commit)
    assert str(world.session.bundle) in caught.value.message
    assert caught.value.hint is not None and "result.patch" in caught.value.hint
    assert not has_object(world.source, secret_commit)
    assert git(world.source, "branch", "--list", BRANCH) == ""


async def test_a_bundle_with_other_heads_or_another_tip_is_refused(world: World) -> None:
    head = world.agent_commits({"a.txt": "two\n"})
    ws = world.session.workspace
    git(ws, "branch", "extra")
    git(ws, "bundle", "create", "-q", str(world.session.bundle), f"{world.base}..{BRANCH}", "extra")
    with pytest.raises(RepoError, match="does not hold exactly"):
        await world.bring_back(head)
    world.bundle()
    with pytest.raises(RepoError, match="does not hold exactly"):
        await world.bring_back(world.base[:-1] + ("0" if world.base[-1] != "0" else "1"))
    assert git(world.source, "branch", "--list", BRANCH) == ""


async def test_a_branch_the_user_changed_is_never_moved(world: World, tmp_path: Path) -> None:
    """Resume after the user committed on hal/<id>: the user's commit stays."""
    first = world.agent_commits({"a.txt": "two\n"})
    world.bundle()
    await world.bring_back(first)
    # The user works on the task branch in the source repository.
    check = tmp_path / "check"
    git(world.source, "worktree", "add", "-q", str(check), BRANCH)
    (check / "user.txt").write_text("mine\n")
    git(check, "add", "-A")
    git(check, "commit", "-qm", "user work")
    user_head = git(check, "rev-parse", "HEAD")
    # The resumed agent goes on from where it was.
    second = world.agent_commits({"b.txt": "more\n"})
    world.bundle()
    brought = await world.bring_back(second)
    assert isinstance(brought, landing.BroughtBack)
    assert brought.moved_aside and brought.branch == f"{BRANCH}-2"
    assert git(world.source, "rev-parse", BRANCH) == user_head
    assert git(world.source, "rev-parse", f"{BRANCH}-2") == second
    # A third run moves the -2 branch hal made, since nobody touched it.
    third = world.agent_commits({"c.txt": "again\n"})
    world.bundle()
    again = await world.bring_back(third)
    assert isinstance(again, landing.BroughtBack) and again.branch == f"{BRANCH}-2"
    assert git(world.source, "rev-parse", f"{BRANCH}-2") == third


async def test_a_branch_hal_moved_before_is_moved_again(world: World) -> None:
    first = world.agent_commits({"a.txt": "two\n"})
    world.bundle()
    await world.bring_back(first)
    second = world.agent_commits({"a.txt": "three\n"})
    world.bundle()
    brought = await world.bring_back(second)
    assert isinstance(brought, landing.BroughtBack) and not brought.moved_aside
    assert git(world.source, "rev-parse", BRANCH) == second


async def test_a_source_branch_named_hal_does_not_break_bringing_back(world: World) -> None:
    """A branch `hal` makes `hal/<id>` impossible; the result lands on `hal-<id>` instead
    of a failed task with advice to prune remotes."""
    git(world.source, "branch", "hal")
    head = world.agent_commits({"a.txt": "two\n"})
    world.bundle()
    brought = await world.bring_back(head)
    assert isinstance(brought, landing.BroughtBack)
    assert brought.branch == f"hal-{TASK}" and brought.moved_aside
    assert git(world.source, "rev-parse", f"hal-{TASK}") == head
    assert git(world.source, "rev-parse", "hal") == world.base


async def test_no_change_creates_the_branch_at_the_base(world: World) -> None:
    brought = await world.bring_back(world.base)
    assert isinstance(brought, landing.BroughtBack)
    assert git(world.source, "rev-parse", BRANCH) == world.base


@pytest.mark.parametrize("where", ["file", "history", "message"])
async def test_a_secret_in_the_result_keeps_the_branch_out(world: World, where: str) -> None:
    """The value of a task secret anywhere in the new objects (a file, a
    file removed again later, a commit message) stops the branch and names where it is."""
    secret = "sk-live-7f3a9c2e1b"
    if where == "file":
        head = world.agent_commits({"a.txt": "two\n", "conf/env.txt": f"KEY={secret}\n"})
    elif where == "history":
        world.agent_commits({"leak.txt": "x" * 5000 + secret + "\n"})
        (world.session.workspace / "leak.txt").unlink()
        head = world.agent_commits({})
    else:
        head = world.agent_commits({"a.txt": "two\n"}, message=f"use {secret}")
    world.bundle()
    with pytest.raises(SecretInResult) as caught:
        await world.bring_back(head, SecretMasker([secret]))
    text = caught.value.one_line()
    assert secret not in text
    assert {"file": "conf/env.txt", "history": "leak.txt", "message": "commit"}[where] in text
    assert "result.bundle" in text
    assert git(world.source, "branch", "--list", BRANCH) == ""
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""


async def test_a_secret_split_across_read_chunks_is_found(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resultscan, "_MATCH_CHUNK", 7)
    secret = "tok-0123456789abcdef"
    head = world.agent_commits({"big.txt": "y" * 31 + secret + "z" * 40})
    world.bundle()
    with pytest.raises(SecretInResult, match=r"big\.txt"):
        await world.bring_back(head, SecretMasker([secret]))


async def test_the_source_repository_gone_says_where_the_work_is(world: World) -> None:
    head = world.agent_commits({"a.txt": "two\n"})
    world.bundle()
    world.source.rename(world.source.with_name("moved"))
    with pytest.raises(RepoError, match="gone or moved") as caught:
        await world.bring_back(head)
    assert caught.value.hint is not None and str(world.session.bundle) in caught.value.hint


# -- the clone -----------------------------------------------------------------------------


async def test_clone_keeps_no_host_path_in_the_checkout(tmp_path: Path) -> None:
    """The session clone's git config and reflogs do not name the source."""
    w = World(tmp_path)
    await w.clone()
    git_dir = w.session.workspace / ".git"
    for path in git_dir.rglob("*"):
        if path.is_file() and "objects" not in path.parts:
            assert str(w.source) not in path.read_text(errors="replace"), path
    assert git(w.session.workspace, "branch", "--show-current") == BRANCH


@pytest.mark.parametrize("ref", ["-f", "--upload-pack=touch /tmp/x", "--orphan=x"])
async def test_a_ref_never_becomes_an_option(tmp_path: Path, ref: str) -> None:
    """`--ref=-f` used to "succeed" at HEAD."""
    w = World(tmp_path)
    src = gitrepo.RepoSource("local", str(w.source))
    with pytest.raises(RepoError, match="invalid --ref"):
        await gitrepo.clone(src, ref, tmp_path / "ws", BRANCH)
    assert not (tmp_path / "ws").exists()


async def test_a_ref_that_does_not_exist_is_named(tmp_path: Path) -> None:
    w = World(tmp_path)
    src = gitrepo.RepoSource("local", str(w.source))
    with pytest.raises(RepoError, match="'nope' not found"):
        await gitrepo.clone(src, "nope", tmp_path / "ws", BRANCH)


async def test_git_errors_keep_the_whole_message(tmp_path: Path) -> None:
    """Not just git's last line."""
    with pytest.raises(RepoError) as caught:
        await gitrepo.git(["rev-parse", "--verify", "no-such-ref", "also-no"], cwd=tmp_path)
    assert "not a git repository" in caught.value.message
    message = gitrepo.git_message(b"fatal: first\nhint: the fix is\nhint: to do this\n")
    assert message == "fatal: first; hint: the fix is; hint: to do this"
    assert len(gitrepo.git_message(b"x" * 10_000 + b"\n")) <= 1503


@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_a_patch_scan_names_the_file_and_finds_a_secret_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """URL sources bring nothing back into a host repository; their patch is scanned."""
    monkeypatch.setattr(resultscan, "_MATCH_CHUNK", chunk)
    secret = "tok-0123456789abcdef"
    patch = tmp_path / "result.patch"
    patch.write_text(
        "diff --git a/x b/x\n--- a/x\n+++ b/x\n+clean\n"
        "diff --git a/conf/y b/conf/y\n--- a/conf/y\n+++ b/conf/y\n+" + "p" * 13 + secret + "\n"
        "diff --git a/z b/z\n--- a/z\n+++ b/z\n+later\n"
    )
    assert resultscan.patch_holds_secret(patch, SecretMasker([secret])) == "conf/y"
    assert resultscan.patch_holds_secret(patch, SecretMasker(["not-in-there-at-all"])) is None
    assert resultscan.patch_holds_secret(patch, SecretMasker()) is None


async def test_a_first_bring_back_without_changes_runs_one_git(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The branch is created where none was (update-ref against zero);
    # it was read first (rev-parse), then created.
    calls: list[list[str]] = []
    original = bringback.git

    async def counted(args: list[str], **kwargs: object) -> str:
        # The subcommand first, then what it was given (-c NAME=VALUE pairs too).
        calls.append([next(a for a in args if a != "-c" and "=" not in a), *args])
        return await original(args, **kwargs)  # type: ignore[arg-type]

    for module in (bringback, incoming, landing):  # each step's own git
        monkeypatch.setattr(module, "git", counted)
    brought = await world.bring_back(world.base)
    assert isinstance(brought, landing.BroughtBack) and brought.branch == BRANCH
    assert [args[0] for args in calls] == ["update-ref"]
    assert git(world.source, "rev-parse", BRANCH) == world.base
    # The next run reads the branch hal left (compare-and-set), as before.
    calls.clear()
    head = world.agent_commits({"a.txt": "two\n"})
    world.bundle()
    brought = await world.bring_back(head)
    assert isinstance(brought, landing.BroughtBack) and not brought.moved_aside
    assert git(world.source, "rev-parse", BRANCH) == head
    # Was bundle verify, list-heads, fetch, rev-parse, rev-parse, update-ref (move),
    # update-ref (drop the private ref): the header is read in Python, the fetch verifies,
    # and one transaction moves the branch and drops the private ref. The bundle's pack is
    # indexed once more, strictly (the fetch checks no object of a bundle).
    assert [args[0] for args in calls] == [
        "index-pack", "fetch", "rev-parse", "rev-parse", "update-ref"
    ]  # fmt: skip
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""
    fetch = calls[1]
    assert "maintenance.auto=false" in fetch  # no `git maintenance run --auto` child
    # A first result with commits: the strict index, fetch, rev-parse, one update-ref.
    calls.clear()
    git(world.source, "branch", "-D", BRANCH)
    (world.session.root / "brought-back.json").unlink(missing_ok=True)
    world.session.brought_back.unlink(missing_ok=True)
    brought = await world.bring_back(head)
    assert isinstance(brought, landing.BroughtBack) and brought.branch == BRANCH
    assert [args[0] for args in calls] == ["index-pack", "fetch", "rev-parse", "update-ref"]
    assert git(world.source, "rev-parse", BRANCH) == head
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""


def test_the_bundle_header_is_read_as_git_lists_it(world: World, tmp_path: Path) -> None:
    head = world.agent_commits({"a.txt": "two\n"})
    ws = world.session.workspace
    git(ws, "branch", "extra")
    for spec in ([f"{world.base}..{BRANCH}"], [BRANCH], [f"{world.base}..{BRANCH}", "extra"]):
        bundle = tmp_path / "b.bundle"
        git(ws, "bundle", "create", "-q", str(bundle), *spec)
        listed = git(ws, "bundle", "list-heads", str(bundle))
        assert incoming.bundle_heads(bundle) == [line.split(" ", 1) for line in listed.splitlines()]
        bundle.unlink()
    assert head
    # Anything not in v2's plain form is left to git.
    odd = tmp_path / "odd.bundle"
    for header in (
        b"# v3 git bundle\n@object-format=sha1\n",
        b"# v2 git bundle\n" + head.encode() + b"\n",  # a ref line without a name
        b"# v2 git bundle\n-nothex\n",
        b"# v2 git bundle\n" + head.encode() + b" refs/heads/x",  # no end of header
        b"not a bundle\n\n",
    ):
        odd.write_bytes(header + b"\nPACK")
        assert incoming.bundle_heads(odd) is None, header


async def test_a_bundle_whose_prerequisites_the_source_lacks_is_refused(world: World) -> None:
    """No `git bundle verify` of its own any more: the fetch runs the same check."""
    first = world.agent_commits({"a.txt": "two\n"})
    head = world.agent_commits({"a.txt": "three\n"})
    git(world.session.workspace, "bundle", "create", "-q", str(world.session.bundle),
        f"{first}..{BRANCH}")  # fmt: skip
    with pytest.raises(RepoError, match="prerequisite") as caught:
        await world.bring_back(head)
    assert caught.value.hint is not None and "result.patch" in caught.value.hint
    assert git(world.source, "branch", "--list", BRANCH) == ""
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""
    assert not has_object(world.source, head)


def _smuggling_bundle(world: World, head: str, extra: list[bytes]) -> list[str]:
    """The result bundle, its pack also carrying objects no commit of it reaches (the agent
    writes the bundle); the ids of those."""
    ws = world.session.workspace
    ids = [
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"], cwd=ws, input=data, capture_output=True
        )
        .stdout.decode()
        .strip()
        for data in extra
    ]
    listed = git(ws, "rev-list", "--objects", head, "--not", world.base)
    names = "".join(line.split()[0] + "\n" for line in listed.splitlines())
    pack = subprocess.run(
        ["git", "pack-objects", "--stdout"], cwd=ws, input=(names + "\n".join(ids) + "\n").encode(),
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    header = f"# v2 git bundle\n-{world.base} base\n{head} refs/heads/{BRANCH}\n\n"
    world.session.bundle.write_bytes(header.encode() + pack)
    return ids


@pytest.mark.parametrize("fillers", [0, 150])  # loose objects, or a pack the source keeps
@pytest.mark.parametrize("outcome", ["brought back", "secret found"])
async def test_objects_the_scan_never_saw_never_reach_the_source(
    world: World, fillers: int, outcome: str
) -> None:
    """The bundle is the agent's: objects its commits do not reach are not scanned, so they
    must not land in the source repository (whose later snapshots every sandbox reads)."""
    secret = "sk-live-smuggled-0a1b2c"
    files = {"a.txt": "two\n"} if outcome == "brought back" else {"leak.txt": f"{secret}\n"}
    head = world.agent_commits(files)
    hidden = [f"{secret}\n".encode(), *(f"filler {n}\n".encode() for n in range(fillers))]
    ids = _smuggling_bundle(world, head, hidden)
    if outcome == "brought back":
        await world.bring_back(head, SecretMasker([secret]))
        assert git(world.source, "rev-parse", BRANCH) == head
        assert git(world.source, "cat-file", "-p", f"{head}:a.txt") == "two"
        git(world.source, "fsck", "--connectivity-only", "--no-progress")  # whole
    else:
        with pytest.raises(SecretInResult):
            await world.bring_back(head, SecretMasker([secret]))
        leak = git(world.session.workspace, "rev-parse", f"{head}:leak.txt")
        ids.append(leak)  # scanned and refused: it must not stay in the source either
    for oid in ids:
        found = subprocess.run(["git", "cat-file", "-e", oid], cwd=world.source)
        assert found.returncode != 0, oid
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""


@pytest.mark.parametrize("masked", [False, True])  # fetched into the source, or quarantined
async def test_an_object_bomb_in_the_bundle_is_refused_within_hosts_git_memory_bound(
    world: World, monkeypatch: pytest.MonkeyPatch, masked: bool
) -> None:
    # An agent hides a huge blob from its own sandbox's diff (a replace ref; its index marks
    # the file skip-worktree): host git inflated the whole blob, outside any memory limit.
    ws = world.session.workspace
    oid = loose_bomb(ws, 96 << 20)
    git(ws, "update-index", "--add", "--cacheinfo", f"100644,{oid},bomb.bin")
    git(ws, "commit", "-qm", "agent work")
    head = git(ws, "rev-parse", "HEAD")
    world.bundle()
    monkeypatch.setattr(incoming, "HEAP", 32 << 20)
    masker = SecretMasker(["sk-live-not-in-it-42"] if masked else [])
    with pytest.raises(RepoError, match=r"[Oo]ut of memory"):
        await world.bring_back(head, masker)
    assert git(world.source, "branch", "--list", BRANCH) == ""
    assert git(world.source, "for-each-ref", "refs/hal-incoming") == ""
    monkeypatch.setattr(incoming, "HEAP", 512 << 20)  # room for it: brought back as ever
    await world.bring_back(head, masker)
    assert git(world.source, "rev-parse", BRANCH) == head


@pytest.mark.parametrize("name", ["with:colon", '"quoted\\dir'])
async def test_a_source_whose_path_has_a_colon_is_still_quarantined_and_brought_back(
    tmp_path: Path, name: str
) -> None:
    # The quarantine borrows the source's objects through GIT_ALTERNATE_OBJECT_DIRECTORIES,
    # a colon-separated list.
    w = World(tmp_path / name)
    await w.clone()
    head = w.agent_commits({"a.txt": "two\n"})
    w.bundle()
    await w.bring_back(head, SecretMasker(["sk-live-not-in-it-42"]))
    assert git(w.source, "rev-parse", BRANCH) == head
    git(w.source, "fsck", "--connectivity-only", "--no-progress")
