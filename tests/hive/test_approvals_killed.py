"""An approval killed (SIGKILL) between its merge's ``update-ref`` and the record that settles
it: the target branch holds the work, the proposal is still pending; approving it again
finds the work merged, moves nothing and settles it, with the proposer told once."""

from __future__ import annotations

from pathlib import Path

from tests.hive.conftest import agent_commit, git, user_advances_main
from tests.hive.crash_helpers import killed

from hal9999.hive import approvals, broker
from hal9999.hive.merge import PIN_PREFIX
from hal9999.store import Store

# The approval dies as soon as its merge has moved the target branch.
DIES_AFTER_THE_MERGE = """
from hal9999.hive import approvals, merge
real = merge.merge
async def merged(*args, **kwargs):
    result = await real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
merge.merge = merged
asyncio.run(approvals.approve(store, thread))
"""


async def test_an_approval_killed_after_its_merge_is_settled_by_the_next_approve(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    head = agent_commit(repo, "alice", {"app.py": "x = 1\n"})
    user_main = user_advances_main(repo)
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")

    run = killed(tmp_path / "halhome", DIES_AFTER_THE_MERGE, proposal.id, 0)
    assert run.returncode == -9, run.stderr
    merged = git(repo, "rev-parse", "main")
    assert git(repo, "rev-parse", f"{merged}^1") == user_main
    assert git(repo, "rev-parse", f"{merged}^2") == head
    assert approvals.get(store, proposal.id).state == "pending"

    done = await approvals.approve(store, proposal.id)
    assert done.state == "approved" and done.result is not None
    assert done.result["how"] == "already-merged", done.result
    assert git(repo, "rev-parse", "main") == merged  # no second merge commit
    assert git(repo, "for-each-ref", PIN_PREFIX) == ""
    [message] = broker.inbox(store, "alice")
    assert message.ref == proposal.id and merged[:12] in message.body
