"""The approval queue: deny with a reason that reaches the proposer, expiry, spawn/destroy
executors, gated tool calls, compare-and-set resolution and the events of each action."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.hive.conftest import agent_commit, git, hive_events

from hal9999.errors import ThreadNotFound, ThreadStateError, UsageError
from hal9999.hive import approvals, broker
from hal9999.hive.merge import PIN_PREFIX
from hal9999.hive.store import hive_write
from hal9999.hive.threads import Approval, open_threads
from hal9999.store import Store


async def test_a_denial_and_its_reason_reach_the_proposing_agent(store: Store, repo: Path) -> None:
    agent_commit(repo, "alice", {"new.txt": "hello\n"})
    main = git(repo, "rev-parse", "main")
    proposal = await approvals.propose_apply(store, proposer="alice", repo=repo, target="main")
    denied = approvals.deny(store, proposal.id[:6], reason="please add a test first")
    assert denied.state == "denied" and denied.reason == "please add a test first"
    assert denied.resolved_by == broker.OPERATOR
    [message] = broker.inbox(store, "alice")
    assert (message.kind, message.sender, message.ref) == ("approval", "hal", proposal.id)
    assert "denied" in message.body and "please add a test first" in message.body
    assert git(repo, "rev-parse", "main") == main
    assert git(repo, "for-each-ref", PIN_PREFIX) == ""
    with pytest.raises(ThreadStateError, match="already denied by operator"):
        await approvals.approve(store, proposal.id)
    with pytest.raises(UsageError, match="reason is empty"):
        approvals.deny(store, proposal.id, reason="  ")
    types = [event["type"] for event in hive_events(store)]
    assert types == ["approval_added", "approval_resolved"]
    assert hive_events(store)[1]["state"] == "denied"


def test_a_proposal_expires_and_the_proposer_is_told(store: Store) -> None:
    proposal = approvals.propose(store, kind="spawn", proposer="alice", title="spawn carol",
                                 payload={"name": "carol"}, ttl_s=60)  # fmt: skip
    assert approvals.expire_due(store, now=time.time() + 30) == []
    [expired] = approvals.expire_due(store, now=time.time() + 61)
    assert expired.state == "expired" and expired.resolved_by == "hal"
    [message] = broker.inbox(store, "alice")
    assert message.kind == "approval" and "expired" in message.body
    with pytest.raises(ThreadStateError, match="already expired"):
        approvals.deny(store, proposal.id, reason="late")
    assert approvals.expire_due(store, now=time.time() + 120) == []  # once only


async def test_approving_after_the_expiry_time_expires_it_instead(store: Store) -> None:
    proposal = approvals.propose(store, kind="tool", proposer="bob", title="run rm -rf build",
                                 payload={"tool": "bash"}, ttl_s=0.05)  # fmt: skip
    time.sleep(0.1)
    with pytest.raises(ThreadStateError, match="has expired"):
        await approvals.approve(store, proposal.id)
    assert approvals.get(store, proposal.id).state == "expired"


async def test_spawn_and_destroy_run_their_executor_once_approved(store: Store) -> None:
    proposal = approvals.propose(store, kind="spawn", proposer="alice", title="spawn carol",
                                 payload={"name": "carol", "agent": "claude"})  # fmt: skip
    with pytest.raises(ThreadStateError, match="only be carried out where the hive runs"):
        await approvals.approve(store, proposal.id)
    assert approvals.get(store, proposal.id).state == "pending"
    seen: list[Approval] = []

    async def spawn(approval: Approval, settle: approvals.Settle) -> None:
        seen.append(approval)
        with hive_write(store) as (conn, recorded):
            settle(conn, recorded, {"spawned": approval.payload["name"]})

    done = await approvals.approve(store, proposal.id, executors={"spawn": spawn})
    assert [a.id for a in seen] == [proposal.id]
    assert done.state == "approved" and done.result == {"spawned": "carol"}
    assert "approved" in broker.inbox(store, "alice")[0].body


async def test_a_gated_tool_call_is_only_a_decision(store: Store) -> None:
    proposal = approvals.propose(store, kind="tool", proposer="bob", title="push to origin",
                                 payload={"tool": "git push"})  # fmt: skip
    assert open_threads(store, "bob").approvals == [proposal]
    assert open_threads(store, "alice").approvals == []
    done = await approvals.approve(store, proposal.id, reason="once")
    assert done.state == "approved" and done.result == {}
    assert open_threads(store).count == 0


def test_bad_proposals_and_unknown_ids_are_one_line_errors(store: Store) -> None:
    with pytest.raises(UsageError, match="neither 'operator' nor an agent"):
        approvals.propose(store, kind="spawn", proposer="hal", title="x", payload={})
    with pytest.raises(UsageError, match="propose_apply"):
        approvals.propose(store, kind="apply", proposer="alice", title="x", payload={})
    with pytest.raises(UsageError, match="over 16 KiB"):
        approvals.propose(store, kind="tool", proposer="alice", title="x",
                          payload={"x": "y" * 20000})  # fmt: skip
    with pytest.raises(UsageError, match="ttl"):
        approvals.propose(store, kind="tool", proposer="alice", title="x", payload={}, ttl_s=-1)
    with pytest.raises(ThreadNotFound, match="matches no approval"):
        approvals.get(store, "a-nope")
    with pytest.raises(ThreadNotFound, match="matches no approval"):
        approvals.deny(store, "", reason="x")


def test_an_ambiguous_id_prefix_says_to_give_more(store: Store) -> None:
    for title in ("one", "two"):
        approvals.propose(store, kind="tool", proposer="alice", title=title, payload={})
    with pytest.raises(ThreadNotFound, match="'a-' matches several approvals") as caught:
        approvals.get(store, "a-")
    assert caught.value.hint is not None and "give more of the id" in caught.value.hint


async def test_of_two_resolutions_at_once_only_one_wins(store: Store) -> None:
    proposal = approvals.propose(store, kind="tool", proposer="bob", title="t", payload={})
    stale = approvals.get(store, proposal.id)
    approvals.deny(store, proposal.id, reason="no")
    # A second process that read the proposal as pending before the denial landed:
    with pytest.raises(ThreadStateError, match="already denied"):
        approvals._resolve(store, stale, "approved", "operator", None, {}, "approved")
    assert len(broker.inbox(store, "bob")) == 1


def test_an_agent_cannot_bury_the_operator_in_proposals(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(approvals, "MAX_PENDING", 2)
    for n in range(2):
        approvals.propose(store, kind="tool", proposer="bob", title=f"t{n}", payload={})
    with pytest.raises(UsageError, match="already has 2 proposals waiting"):
        approvals.propose(store, kind="tool", proposer="bob", title="t3", payload={})
    approvals.propose(store, kind="tool", proposer="alice", title="alice's", payload={})
    approvals.deny(store, approvals.list_approvals(store)[0].id, reason="no")
    approvals.propose(store, kind="tool", proposer="bob", title="room again", payload={})


def test_a_long_history_lists_its_latest_proposals(store: Store) -> None:
    made = [approvals.propose(store, kind="tool", proposer="bob", title=f"t{n}", payload={})
            for n in range(3)]  # fmt: skip
    assert [a.id for a in approvals.list_approvals(store, state=None, limit=2)] == [
        made[1].id, made[2].id]  # fmt: skip
