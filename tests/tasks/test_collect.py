"""What collection brings back from a task's sandbox: the agent's leftovers committed on the
task branch (pointed at HEAD wherever the agent moved it), the patch and the bundle copied
out of the agent's home by fd (a large change never through stdout, no stale bundle when
nothing changed), work in nested repositories reported, and a failing step's own message.

What it refuses is in test_collect_refused.py, the programs it runs in
test_collect_programs.py; their shared world is in conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from tests.tasks.conftest import BRANCH, HostileSandbox, World, git, run_collect

from hal9999.errors import DiskFull, RepoError


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
    """The patch is a file copied by fd, stdout is one line."""
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


async def test_a_branch_moved_away_from_head_is_still_pointed_at_head(
    world: tuple[World, HostileSandbox],
) -> None:
    w, sandbox = world
    git(w.session.workspace, "checkout", "-q", "-b", "elsewhere")
    (w.session.workspace / "a.txt").write_text("two\n")
    result = await run_collect(w, sandbox)
    assert git(w.session.workspace, "rev-parse", BRANCH) == result.head != w.base
    assert result.files_changed == 1


async def test_work_in_a_nested_repository_is_reported(
    world: tuple[World, HostileSandbox],
) -> None:
    """An agent that commits inside its own nested repository."""
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


async def test_a_failed_step_names_no_patch_or_bundle_of_an_earlier_run(
    world: tuple[World, HostileSandbox],
) -> None:
    """Nothing of a run whose collection failed is copied out: a patch and a bundle still in
    the session are an earlier run's, and the hint must not send the user to them."""
    w, sandbox = world
    w.session.patch.write_text("an earlier run's patch\n")
    w.session.bundle.write_bytes(b"an earlier run's bundle")
    (w.session.workspace / ".git" / "index").write_bytes(b"corrupt index")
    with pytest.raises(RepoError) as caught:
        await run_collect(w, sandbox)
    hint = caught.value.hint or ""
    assert str(w.session.workspace) in hint and f"hal task resume {w.session.root.name}" in hint
    assert str(w.session.patch) not in hint and str(w.session.bundle) not in hint


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root only)")
async def test_a_full_disk_is_named_with_what_to_do(world: tuple[World, HostileSandbox]) -> None:
    """The result directory is written on the disk that holds the session; when it is full,
    the error says so, not only git's own words."""
    w, sandbox = world
    (w.session.workspace / "big.txt").write_bytes(os.urandom(1 << 20).hex().encode())
    home = w.session.home
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(home)], check=True)
    try:
        with pytest.raises(DiskFull) as caught:
            await run_collect(w, sandbox)
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)
    message = caught.value.message
    assert message.startswith("the disk holding hal's home is full (bundling the branch failed: ")
    assert (caught.value.hint or "").startswith("free space on it; the work is safe in the ")
    assert "big.txt" in subprocess.run(
        ["git", "-C", str(w.session.workspace), "show", "--stat", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


async def test_a_running_collection_is_watched_and_ends_with_its_watchs_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The agent's code runs in the collection (a clean filter in `git add`): the disk check
    # that watches its run watches this too, and its refusal ends the script.
    from hal9999.errors import DiskLimitExceeded
    from hal9999.providers.base import ExecResult
    from hal9999.tasks import collect

    calls: list[None] = []

    async def watch() -> None:
        calls.append(None)
        if len(calls) == 2:
            raise DiskLimitExceeded("over")

    async def done() -> ExecResult:
        return ExecResult(0, b"", b"")

    assert (await collect._watched(done(), watch)).exit_code == 0
    assert calls == []  # one that ends within the first period is never looked at
    monkeypatch.setattr(collect, "WATCH_S", 0.01)
    ended: list[str] = []

    async def endless() -> ExecResult:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        raise AssertionError("unreachable")

    with pytest.raises(DiskLimitExceeded):
        await collect._watched(endless(), watch)
    assert len(calls) == 2 and ended == ["cancelled"]
