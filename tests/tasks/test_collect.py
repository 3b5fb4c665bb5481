"""Collection: the patch and bundle leave the agent's home by fd, never by a path the agent
can redirect; large results never pass through memory; nested repositories are reported.

A leftover agent process is played by a hook that runs on the host right after the collect
script and before the host copies the results: it swaps what the script wrote for a
symlink, a dangling symlink, a directory, a FIFO or a hard link to a host file. The session
lives on the test's tmp filesystem, or on /dev/shm with the host target on tmp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hal9999.errors import RepoError, UnsafePath
from hal9999.providers.base import Sandbox
from hal9999.providers.registry import load_provider
from hal9999.spec import SandboxSpec
from hal9999.tasks import collect, gitrepo, mirror
from hal9999.tasks.session import Session

TASK = "abcdef012345"
BRANCH = f"hal/{TASK}"
Hook = Callable[[Path], None]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


class HostileSandbox:
    """Delegates to a real sandbox; after each exec, ``hook`` gets the result dir (if any)."""

    def __init__(self, inner: Sandbox, home: Path) -> None:
        self._inner = inner
        self._home = home
        self.hook: Hook | None = None
        self.stdout_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def exec(self, *args: Any, **kw: Any) -> Any:
        result = await self._inner.exec(*args, **kw)
        self.stdout_sizes.append(len(result.stdout))
        outs = sorted(self._home.glob(".hal-result-*"))
        if self.hook is not None and outs:
            self.hook(outs[0])
        return result


@pytest.fixture(params=["same-fs", "other-fs"])
def base_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "same-fs":
        yield tmp_path
        return
    if not os.access("/dev/shm", os.W_OK) or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        yield Path(other)


class World:
    def __init__(self, base: Path, host: Path) -> None:
        self.source = host / "source"
        self.host = host
        self.session = Session(base / "session")
        self.base = ""

    def host_secret(self) -> Path:
        secret = self.host / "shadow"
        secret.write_text("host-only secret\n")
        return secret


@pytest.fixture
async def world(
    base_dir: Path, tmp_path: Path, hal_home: Path
) -> AsyncIterator[tuple[World, HostileSandbox]]:
    w = World(base_dir, tmp_path)
    w.source.mkdir()
    git(w.source, "init", "-q", "-b", "main")
    (w.source / "a.txt").write_text("one\n")
    git(w.source, "add", "-A")
    git(w.source, "commit", "-qm", "initial")
    w.session.create()
    src = gitrepo.RepoSource("local", str(w.source))
    w.base = await gitrepo.clone(src, None, w.session.workspace, BRANCH)
    provider = load_provider("local", state_dir=hal_home / "sandboxes")
    spec = SandboxSpec(
        provider="local", network="host", workspace=w.session.workspace, binds=w.session.binds()
    )
    async with await provider.create(spec) as sandbox:
        yield w, HostileSandbox(sandbox, w.session.home)


async def run_collect(w: World, sandbox: HostileSandbox, *, full: bool = False) -> Any:
    return await collect.collect(
        sandbox,  # type: ignore[arg-type]
        w.session,
        base=w.base,
        branch=BRANCH,
        task_id=TASK,
        full_bundle=full,
    )


async def test_collect_commits_leftovers_and_copies_patch_and_bundle(
    world: tuple[World, HostileSandbox],
) -> None:
    w, sandbox = world
    (w.session.workspace / "a.txt").write_text("two\n")
    result = await run_collect(w, sandbox)
    assert result.committed_leftovers and result.files_changed == 1
    assert "+two" in w.session.patch.read_text()
    assert result.patch_bytes == w.session.patch.stat().st_size
    assert result.bundle_bytes == w.session.bundle.stat().st_size
    assert not list(w.session.home.glob(".hal-result-*"))  # cleaned from the agent's home
    assert w.session.patch.stat().st_mode & 0o777 == 0o600
    heads = git(w.session.workspace, "bundle", "list-heads", str(w.session.bundle))
    assert heads == f"{result.head} refs/heads/{BRANCH}"


async def test_a_large_change_never_passes_through_stdout(
    world: tuple[World, HostileSandbox],
) -> None:
    """Issue 10 item 4: the patch is a file copied by fd, stdout is one line."""
    w, sandbox = world
    (w.session.workspace / "big.txt").write_text("line of text\n" * 200_000)  # ~2.6 MB
    result = await run_collect(w, sandbox)
    assert result.patch_bytes > 2_000_000
    assert max(sandbox.stdout_sizes) < 200


async def test_no_change_leaves_no_stale_bundle(world: tuple[World, HostileSandbox]) -> None:
    w, sandbox = world
    w.session.bundle.write_bytes(b"from an earlier run")
    result = await run_collect(w, sandbox)
    assert result.head == w.base and result.bundle_bytes is None and result.files_changed == 0
    assert not w.session.bundle.exists()
    assert w.session.patch.read_bytes() == b""


def _symlink_to_secret(w: World) -> Hook:
    return lambda out: _replace(out / "result.patch", lambda p: p.symlink_to(w.host_secret()))


def _dangling_to_host(w: World) -> Hook:
    return lambda out: _replace(out / "result.bundle", lambda p: p.symlink_to(w.host / "planted"))


def _directory(w: World) -> Hook:
    return lambda out: _replace(out / "result.patch", lambda p: p.mkdir())


def _fifo(w: World) -> Hook:
    return lambda out: _replace(out / "result.patch", os.mkfifo)


def _hardlink(w: World) -> Hook:
    def plant(out: Path) -> None:
        secret = w.host_secret()

        def link(p: Path) -> None:
            try:
                os.link(secret, p)
            except OSError:  # across filesystems: a second link to a file of the agent's
                (out / "twin").write_text("agent")
                os.link(out / "twin", p)

        _replace(out / "result.patch", link)

    return plant


def _result_dir_link(w: World) -> Hook:
    """The whole result directory swapped for a link to a host directory."""

    def plant(out: Path) -> None:
        (w.host / "decoy").mkdir(exist_ok=True)
        (w.host / "decoy" / "result.patch").write_text("decoy patch with host data\n")
        os.rename(out, out.with_name("moved"))
        out.symlink_to(w.host / "decoy")

    return plant


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


HOSTILE = {
    "symlink": _symlink_to_secret,
    "dangling-symlink": _dangling_to_host,
    "directory": _directory,
    "fifo": _fifo,
    "hardlink": _hardlink,
    "result-dir-link": _result_dir_link,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE))
async def test_a_swap_after_the_script_never_reaches_the_host(
    world: tuple[World, HostileSandbox], shape: str
) -> None:
    w, sandbox = world
    (w.session.workspace / "a.txt").write_text("two\n")
    sandbox.hook = HOSTILE[shape](w)
    with pytest.raises(UnsafePath) as caught:
        await run_collect(w, sandbox)
    assert caught.value.hint is not None and str(w.session.workspace) in caught.value.hint
    for name in ("result.patch", "result.bundle"):
        path = w.session.root / name
        assert not path.is_symlink()
        if path.exists():
            assert b"host" not in path.read_bytes()
    assert not (w.host / "planted").exists()
    if (w.host / "shadow").exists():
        assert (w.host / "shadow").read_text() == "host-only secret\n"
    assert not list(w.session.home.glob(".hal-result-*"))


async def test_a_planted_old_staging_name_is_ignored(world: tuple[World, HostileSandbox]) -> None:
    """The name the host used to move from (issue 9 item 2) means nothing any more."""
    w, sandbox = world
    target = w.host / "target"
    target.mkdir()
    (w.session.home / ".hal-result.bundle").symlink_to(target)
    w.session.bundle.unlink(missing_ok=True)
    (w.session.workspace / "a.txt").write_text("two\n")
    await run_collect(w, sandbox)
    assert list(target.iterdir()) == []
    assert w.session.bundle.is_file() and not w.session.bundle.is_symlink()


async def test_work_in_a_nested_repository_is_reported(
    world: tuple[World, HostileSandbox],
) -> None:
    """Issue 10 item 3: an agent that commits inside its own nested repository."""
    w, sandbox = world
    nested = w.session.workspace / "sub"
    nested.mkdir()
    git(nested, "init", "-q")
    (nested / "code.py").write_text("print('work')\n")
    git(nested, "add", "-A")
    git(nested, "commit", "-qm", "nested work")
    result = await run_collect(w, sandbox)
    assert result.nested == ("sub",)


async def test_files_dropped_into_an_empty_submodule_are_reported(
    world: tuple[World, HostileSandbox], tmp_path: Path
) -> None:
    w, sandbox = world
    ws = w.session.workspace
    git(ws, "update-index", "--add", "--cacheinfo", f"160000,{w.base},vendor/lib")
    git(ws, "commit", "-qm", "a submodule, never checked out")
    (ws / "vendor" / "lib").mkdir(parents=True)
    (ws / "vendor" / "lib" / "patch.c").write_text("int x;\n")
    result = await run_collect(w, sandbox)
    assert "vendor/lib" in result.nested


async def test_a_failing_step_keeps_git_s_message_and_says_where_the_work_is(
    world: tuple[World, HostileSandbox],
) -> None:
    w, sandbox = world
    (w.session.workspace / ".git" / "index").write_bytes(b"corrupt index")
    with pytest.raises(RepoError) as caught:
        await run_collect(w, sandbox)
    assert caught.value.message.startswith("reading the changes failed: ")
    assert "index" in caught.value.message
    assert caught.value.hint is not None and str(w.session.workspace) in caught.value.hint


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
    while args and args[0] == "-c":
        args = args[2:]
    return f"git {args[0]}"


async def test_collecting_a_run_that_changed_nothing_runs_two_git(
    world: tuple[World, HostileSandbox], programs: Callable[[], list[str]]
) -> None:
    # Issue 16, fourth pass: was mkdir, git status, rev-parse, update-ref, diff, awk, status,
    # cut, ls-files, awk, diff, wc, diff (8 git, 13 programs); fifth: mkdir, git status,
    # rev-parse, ls-files, awk. Now no result directory either.
    w, sandbox = world
    w.session.bundle.write_bytes(b"from an earlier run")
    result = await run_collect(w, sandbox)
    assert result.head == w.base and result.files_changed == 0 and result.nested == ()
    assert result.bundle_bytes is None and not w.session.bundle.exists()
    assert result.patch_bytes == 0 and w.session.patch.read_bytes() == b""
    assert programs() == sorted(["git status", "git ls-files"])
    assert not list(w.session.home.glob(".hal-result-*"))


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
    source.mkdir()
    git(source, "init", "-q", "-b", "main")
    (source / "a.txt").write_text("one\n")
    git(source, "add", "-A")
    git(source, "commit", "-qm", "initial")
    first = git(source, "rev-parse", "HEAD")
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


async def test_a_branch_moved_away_from_head_is_still_pointed_at_head(
    world: tuple[World, HostileSandbox],
) -> None:
    w, sandbox = world
    git(w.session.workspace, "checkout", "-q", "-b", "elsewhere")
    (w.session.workspace / "a.txt").write_text("two\n")
    result = await run_collect(w, sandbox)
    assert git(w.session.workspace, "rev-parse", BRANCH) == result.head != w.base
    assert result.files_changed == 1


class ForgingSandbox(HostileSandbox):
    """The agent took the collect script over (a clean filter of its checkout's config runs
    inside the script's sandbox as the agent's uid, which may ptrace the script): the real
    script runs, then its stdout is the agent's and its exit status 0."""

    forged = b""

    async def exec(self, *args: Any, **kw: Any) -> Any:
        result = await super().exec(*args, **kw)
        return type(result)(exit_code=0, stdout=self.forged, stderr=result.stderr)


@pytest.mark.parametrize(
    "line",
    [
        "{head} 0 \u00b2",  # str.isdigit() but not int()
        "{head} 0 " + "9" * 5000,  # past int()'s digit limit
        "{head} 0 99999999999999999999999",  # past SQLite's INTEGER
        "{head} 1 \u0661",  # an Arabic-Indic one: int() takes it, no script prints it
        "HEAD~1 0 0",
        "{head}\x00 0 0",
        "{head} 2 0",
        "{head} 0 0 unchanged",  # the work committed, yet "unchanged": not the base
        "{head} 0 0 unchanged extra",
        "",
    ],
)
async def test_a_forged_result_line_is_refused_in_one_line(
    world: tuple[World, HostileSandbox], line: str
) -> None:
    w, hostile = world
    sandbox = ForgingSandbox(hostile._inner, w.session.home)
    (w.session.workspace / "a.txt").write_text("two\n")
    git(w.session.workspace, "commit", "-qam", "work")
    head = git(w.session.workspace, "rev-parse", "HEAD")
    sandbox.forged = (line.format(head=head) + "\n").encode()
    with pytest.raises(RepoError) as caught:
        await run_collect(w, sandbox)  # type: ignore[arg-type]
    assert "\n" not in caught.value.message
    assert str(w.session.workspace) in (caught.value.hint or "")


async def test_unchanged_is_believed_only_for_the_base_and_never_for_a_whole_bundle(
    world: tuple[World, HostileSandbox],
) -> None:
    w, hostile = world
    sandbox = ForgingSandbox(hostile._inner, w.session.home)
    sandbox.forged = f"{w.base} 0 0 unchanged\n".encode()
    result = await run_collect(w, sandbox)  # type: ignore[arg-type]
    assert result.head == w.base and result.bundle_bytes is None
    with pytest.raises(RepoError):
        await run_collect(w, sandbox, full=True)  # type: ignore[arg-type]
