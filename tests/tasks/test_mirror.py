"""Checkouts that borrow their objects from a read-only snapshot of the source:
nothing of the source's object store is copied per task, the snapshot holds only what the
source's branches and tags reach, the agent cannot change it, a changed source gets a new
snapshot, and an old one goes once no session borrows from it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support.mirror import hal, make_repo, run, snapshots
from tests.tasks.conftest import git

from hal9999.tasks import mirror


def file_count(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


# -- the fingerprint ---------------------------------------------------------------------


def test_the_fingerprint_follows_every_ref_change(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    first = mirror.fingerprint(repo)
    assert first is not None and mirror.fingerprint(repo) == first
    seen = {first}
    for args in (
        ("commit", "-q", "--allow-empty", "-m", "more"),  # the branch moves
        ("tag", "v1"),  # a tag
        ("branch", "side"),  # a branch
        ("checkout", "-q", "side"),  # HEAD names another branch
        ("pack-refs", "--all"),  # the same refs, kept otherwise
        ("branch", "-D", "main"),  # a branch goes (from packed-refs)
    ):
        git(repo, *args)
        now = mirror.fingerprint(repo)
        assert now is not None and now not in seen, args
        seen.add(now)
    # Work that moves no ref leaves it as it is.
    (repo / "README").write_text("changed\n")
    git(repo, "add", "README")
    assert mirror.fingerprint(repo) in seen


def test_a_linked_worktree_is_not_snapshotted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "wt")
    assert mirror.fingerprint(tmp_path / "wt") is None


# -- through `hal run` -------------------------------------------------------------------


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_checkout_borrows_the_snapshot_and_brings_its_work_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    script = (
        "cat .git/objects/info/alternates; git log --oneline | wc -l; "
        "echo work > new.txt; git add new.txt; git commit -qm agent; echo committed"
    )
    task, log = run(tmp_path, repo, script)
    assert task["status"] == "succeeded", task
    assert "../../../.hal-objects" in log and "committed" in log
    workspace = Path(task["session_dir"]) / "workspace"
    # None of the source's objects were copied: the checkout holds the agent's commit only.
    source_objects = file_count(repo / ".git" / "objects")
    assert file_count(workspace / ".git" / "objects") < 10 < source_objects
    # No host path in the checkout's git files (the snapshot is named by the session link).
    home = str(tmp_path / "home")
    for path in (workspace / ".git").rglob("*"):
        if path.is_file() and "objects" not in path.relative_to(workspace).parts[1:2]:
            text = path.read_text(errors="replace")
            assert home not in text and str(repo) not in text, path
    # The host can read the checkout too (the user is pointed at it when collection fails).
    assert git(workspace, "-c", f"safe.directory={workspace}", "log", "--oneline", "-1").endswith(
        "agent"
    )
    assert git(repo, "log", "--format=%s", "-1", task["branch"]) == "agent"


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_changed_source_gets_a_new_snapshot_and_old_ones_go_with_their_tasks(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    first, _ = run(tmp_path, repo, "true")
    second, _ = run(tmp_path, repo, "true")
    assert len(snapshots(tmp_path)) == 1
    git(repo, "commit", "-q", "--allow-empty", "-m", "newer")
    third, log = run(tmp_path, repo, "git log --format=%s -1; git branch -a")
    assert "newer" in log
    # Other tasks' result branches are not in a snapshot (each finished task adds one to
    # the source: they would make every next task snapshot again).
    assert first["id"] not in log and "hal/" + third["id"] in log
    assert len(snapshots(tmp_path)) == 2  # the first two tasks still borrow the old one
    # A snapshot whose making died with its process is swept with the unused ones.
    (base_dir,) = (p for p in (tmp_path / "home" / "mirrors").iterdir() if p.is_dir())
    (base_dir / ".s-0123456789ab.tmp" / "objects").mkdir(parents=True)
    hal(tmp_path, repo, "task", "rm", first["id"])
    assert len(snapshots(tmp_path)) == 2
    assert not (base_dir / ".s-0123456789ab.tmp").exists()
    hal(tmp_path, repo, "task", "rm", second["id"])
    assert len(snapshots(tmp_path)) == 1  # nobody borrows from the old one any more
    base = Path(third["session_dir"]) / ".hal-objects"
    assert base.resolve().parent.name == snapshots(tmp_path)[0]
    # The user works on a result branch: the snapshot's HEAD is its commit.
    git(repo, "checkout", "-q", third["branch"])
    git(repo, "commit", "-q", "--allow-empty", "-m", "on the result")
    fourth, log = run(tmp_path, repo, "git log --format=%s -1")
    assert fourth["status"] == "succeeded" and "on the result" in log


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_resumed_task_finds_its_objects_or_says_they_are_gone(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    task, _ = run(tmp_path, repo, "date +%N >> one.txt; git add one.txt; git commit -qm one")
    out = hal(tmp_path, repo, "task", "resume", "--json", task["id"], "again")
    resumed = json.loads(out.stdout)
    assert resumed["status"] == "succeeded", resumed
    # The user deleted hal's snapshots by hand: the resume says so in one line.
    shutil.rmtree(tmp_path / "home" / "mirrors")
    out = hal(tmp_path, repo, "task", "resume", task["id"], "again", check=False)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "the objects this task's checkout borrows are gone" in said, said
    assert "Traceback" not in said


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_ref_no_branch_reaches_and_a_worktree_are_cloned_whole(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "checkout", "-q", "--detach")
    git(repo, "commit", "-q", "--allow-empty", "-m", "loose")
    loose = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    task, log = run(tmp_path, repo, "git log --format=%s -1", "--ref", loose)
    assert task["status"] == "succeeded" and "loose" in log
    session = Path(task["session_dir"])
    assert (session / ".hal-objects").is_dir() and not (session / ".hal-objects").is_symlink()
    assert not (session / "workspace" / ".git" / "objects" / "info" / "alternates").exists()
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "wt")
    task, log = run(tmp_path, tmp_path / "wt", "git log --format=%s -1")
    assert task["status"] == "succeeded" and "init" in log
    workspace = Path(task["session_dir"]) / "workspace"
    assert not (workspace / ".git" / "objects" / "info" / "alternates").exists()


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_source_that_borrows_objects_itself_is_snapshotted_whole(tmp_path: Path) -> None:
    origin = make_repo(tmp_path)
    borrower = tmp_path / "borrower"
    subprocess.run(["git", "clone", "-q", "--shared", str(origin), str(borrower)], check=True)
    assert (borrower / ".git" / "objects" / "info" / "alternates").exists()
    task, log = run(tmp_path, borrower, "git fsck --connectivity-only --no-progress && echo ok")
    assert task["status"] == "succeeded" and "ok" in log, log
    (snap,) = snapshots(tmp_path)
    assert not any((tmp_path / "home" / "mirrors").glob(f"*/{snap}/objects/info/alternates"))


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_borrowing_checkout_resumed_on_another_provider_says_why_it_cannot(
    tmp_path: Path,
) -> None:
    from hal9999.store import Store

    repo = make_repo(tmp_path)
    task, _ = run(tmp_path, repo, "true")
    # A task with several providers is placed where there is room when it is resumed.
    store = Store.open(tmp_path / "home")
    store.update_task(task["id"], provider="local")
    store.close()
    out = hal(tmp_path, repo, "task", "resume", task["id"], "again", check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0
    assert "borrows objects that only a bwrap sandbox mounts" in said, said
    assert f"hal run --ref {task['branch']}" in said and "Traceback" not in said
