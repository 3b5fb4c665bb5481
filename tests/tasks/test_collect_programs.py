"""The programs collection runs: no git it does not need, whether the task
changed nothing or left its work uncommitted, and the shortcut for an unchanged checkout
(one `git status`) taken only where nothing changed: never for a change the checkout's own
config hides from `status`, a URL source (its whole bundle), or a base whose gitlinks may
hide work.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.tasks.conftest import BRANCH, HostileSandbox, World, git, make_repo, run_collect

from hal9999.tasks import mirror
from hal9999.tasks.session import Session


@pytest.fixture
def programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """The programs the collect script ran (git with its subcommand), sorted (a pipeline's
    order is the scheduler's): shims on PATH, as the local provider runs the script with the
    host's PATH."""
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "programs.log"
    log.touch()
    for name in ("git", "awk", "cut", "wc", "mkdir", "ls", "cat"):
        real = shutil.which(name)
        assert real is not None
        shim = shims / name
        said = f"{name} $*" if name == "git" else name  # an awk program has newlines
        shim.write_text(f'#!/bin/sh\necho "{said}" >> {log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    return lambda: sorted(_program(line) for line in log.read_text().splitlines())


def _program(line: str) -> str:
    name, *args = line.split()
    if name != "git":
        return name
    while args and args[0] in ("-c", "--no-optional-locks"):
        args = args[2:] if args[0] == "-c" else args[1:]
    return f"git {args[0]}"


async def test_collecting_a_run_that_changed_nothing_runs_two_git(
    world: tuple[World, HostileSandbox], programs: Callable[[], list[str]]
) -> None:
    # Every program of a collection is a cost on every task: no mkdir, rev-parse,
    # update-ref, diff, awk, cut or wc when nothing changed, and no result directory.
    w, sandbox = world
    w.session.bundle.write_bytes(b"from an earlier run")
    result = await run_collect(w, sandbox)
    assert result.head == w.base and result.files_changed == 0 and result.nested == ()
    assert result.bundle_bytes is None and not w.session.bundle.exists()
    assert result.patch_bytes == 0 and w.session.patch.read_bytes() == b""
    assert programs() == sorted(["git status", "git ls-files"])
    assert not list(w.session.home.glob(".hal-result-*"))


async def test_collecting_a_run_that_changed_nothing_leaves_the_index_unwritten(
    world: tuple[World, HostileSandbox],
) -> None:
    # `status` found the checkout's index racy (written the second its files
    # were) and wrote it again, a lock file and a rename each task.
    w, sandbox = world
    tracked = w.session.workspace / "a.txt"
    later = tracked.stat().st_mtime_ns + 2_000_000_000
    os.utime(tracked, ns=(later, later))  # stat data the index does not have: a refresh
    index = w.session.workspace / ".git" / "index"
    before = index.stat()
    result = await run_collect(w, sandbox)
    assert result.head == w.base and result.files_changed == 0
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_collecting_leftovers_runs_no_git_it_does_not_need(
    world: tuple[World, HostileSandbox], programs: Callable[[], list[str]]
) -> None:
    # Was 10 git: the branch is HEAD (no update-ref) and the raw diff counts the files (no
    # second diff, no wc).
    w, sandbox = world
    (w.session.workspace / "a.txt").write_text("two\n")
    (w.session.workspace / "b.txt").write_text("new\n")
    result = await run_collect(w, sandbox)
    assert result.committed_leftovers and result.files_changed == 2 and result.nested == ()
    assert programs() == sorted([
        "mkdir", "git status", "git add", "git commit", "git rev-parse", "git diff", "awk",
        "git ls-files", "awk", "git status", "cut", "git bundle", "git diff",
    ])  # fmt: skip


async def test_collecting_an_unchanged_checkout_of_its_snapshots_head_runs_one_git(
    world: tuple[World, HostileSandbox], programs: Callable[[], list[str]], hal_home: Path
) -> None:
    """The snapshot knows its HEAD has no gitlinks, so no `ls-files` is needed."""
    w, sandbox = world
    snap = await mirror.snapshot_for(hal_home, str(w.source), w.session.root, None)
    assert snap is not None
    assert (snap / mirror.GITLINKS_FILE).read_text() == f"{w.base} 0\n"
    result = await run_collect(w, sandbox)
    assert result.head == w.base and result.files_changed == 0 and result.nested == ()
    assert programs() == ["git status"]


async def test_a_snapshot_head_with_a_gitlink_is_not_taken_for_one_without(
    tmp_path: Path, hal_home: Path
) -> None:
    source = tmp_path / "linked"
    first = make_repo(source, {"a.txt": "one\n"})
    git(source, "update-index", "--add", "--cacheinfo", f"160000,{first},vendor/lib")
    git(source, "commit", "-qm", "a gitlink")
    head = git(source, "rev-parse", "HEAD")
    session = Session(tmp_path / "s")
    session.create()
    snap = await mirror.snapshot_for(hal_home, str(source), session.root, None)
    assert snap is not None
    assert (snap / mirror.GITLINKS_FILE).read_text() == f"{head} 1\n"
    assert not mirror.base_without_gitlinks(session.root, head)
    assert not mirror.base_without_gitlinks(session.root, first)  # not the snapshot's HEAD


@pytest.mark.parametrize(
    "change", ["untracked", "staged", "deleted", "committed", "detached", "hidden-untracked"]
)
async def test_any_change_takes_the_whole_collection(
    world: tuple[World, HostileSandbox], change: str
) -> None:
    """The unchanged shortcut is only for a checkout where nothing changed, whatever the
    checkout's own config hides from `status`."""
    w, sandbox = world
    ws = w.session.workspace
    if change == "untracked":
        (ws / "new.txt").write_text("new\n")
    elif change == "staged":
        (ws / "a.txt").write_text("two\n")
        git(ws, "add", "a.txt")
    elif change == "deleted":
        (ws / "a.txt").unlink()
    elif change == "committed":
        (ws / "a.txt").write_text("two\n")
        git(ws, "commit", "-qam", "agent")
    elif change == "detached":
        (ws / "a.txt").write_text("two\n")
        git(ws, "commit", "-qam", "agent")
        git(ws, "checkout", "-q", "--detach")
    else:
        git(ws, "config", "status.showUntrackedFiles", "no")
        (ws / "new.txt").write_text("new\n")
    result = await run_collect(w, sandbox)
    assert result.head != w.base and result.files_changed == 1
    assert git(ws, "rev-parse", BRANCH) == result.head
    assert result.bundle_bytes is not None and w.session.patch.read_bytes()
    assert not list(w.session.home.glob(".hal-result-*"))


async def test_a_url_source_still_gets_its_whole_bundle_when_nothing_changed(
    world: tuple[World, HostileSandbox],
) -> None:
    w, sandbox = world
    result = await run_collect(w, sandbox, full=True)
    assert result.head == w.base and result.bundle_bytes is not None
    heads = git(w.session.workspace, "bundle", "list-heads", str(w.session.bundle))
    assert heads == f"{w.base} refs/heads/{BRANCH}"


async def test_an_unchanged_checkout_with_a_gitlink_still_looks_inside_it(
    world: tuple[World, HostileSandbox],
) -> None:
    w, sandbox = world
    ws = w.session.workspace
    git(ws, "update-index", "--add", "--cacheinfo", f"160000,{w.base},vendor/lib")
    git(ws, "commit", "-qm", "a submodule, never checked out")
    w.base = git(ws, "rev-parse", "HEAD")  # the task's base holds the gitlink
    (ws / "vendor" / "lib").mkdir(parents=True)
    (ws / "vendor" / "lib" / "patch.c").write_text("int x;\n")
    result = await run_collect(w, sandbox)
    assert result.head == w.base and "vendor/lib" in result.nested


async def test_a_substitution_that_is_one_git_forks_no_second_shell(
    world: tuple[World, HostileSandbox], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `state=$(g status ...)` forked the substitution's subshell, which forked
    # again for the function's git: two processes for one git on every collection.
    shims = tmp_path / "ancestry"
    shims.mkdir()
    log = tmp_path / "shells.log"
    real = shutil.which("git")
    assert real is not None
    shim = shims / "git"
    # The shells between this git and the process that runs the script (sh's builtins only:
    # another program here would be one more process to count).
    shim.write_text(
        "#!/bin/sh\n"
        "p=$PPID shells=0\n"
        "while read -r _ comm _ parent _ < /proc/$p/stat && [ \"$comm\" = '(sh)' ]; do\n"
        "  shells=$((shells + 1)) p=$parent\n"
        "done\n"
        f'for arg; do case $arg in status|ls-files) echo "$arg $shells" >> {log};; esac; done\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    w, sandbox = world
    result = await run_collect(w, sandbox)
    assert result.head == w.base and result.files_changed == 0
    assert sorted(log.read_text().splitlines()) == ["ls-files 1", "status 1"]
