"""The daemon's routes over approvals, questions and open threads (a real ``hal serve``):
decisions and answers as the operator, spawn and destroy carried out by the daemon's hive,
errors back as their own classes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.hive.conftest import agent_commit, git, local_hal, make_agent

from hal9999.errors import MergeRefused, ThreadNotFound, ThreadStateError
from hal9999.hive import approvals, broker, questions
from hal9999.hive.store import agent_exists
from hal9999.server.client import DaemonClient
from hal9999.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[DaemonClient, Store]]:
    """A running ``hal serve`` of a fresh home with agents alice and bob, and its store."""
    home = tmp_path / "halhome"
    hal = local_hal(home, tmp_path)

    with Store.open(home) as store:
        make_agent(store, "alice")
        make_agent(store, "bob")
        started = hal("serve", "--detach")
        assert started.returncode == 0, started.stderr
        try:
            client = DaemonClient.find(home)
            assert client is not None
            yield client, store
        finally:
            stopped = hal("serve", "--stop")
            assert stopped.returncode == 0, stopped.stderr


def call(client: DaemonClient, method: str, path: str, body: Any = None, **query: Any) -> Any:
    """One API call."""
    return asyncio.run(client.call(method, path, body, query or None))


def test_the_operator_decides_and_answers_through_the_api(
    daemon: tuple[DaemonClient, Store],
) -> None:
    client, store = daemon
    gate = approvals.propose(store, kind="tool", proposer="alice", title="push", payload={})
    carol = {"name": "carol", "agent": "sh run.sh {{prompt_file}}"}
    spawn = approvals.propose(store, kind="spawn", proposer="alice", title="spawn carol",
                              payload=carol)  # fmt: skip
    asked = questions.ask(store, asker="alice", question="which branch?", to="bob")

    assert [a["id"] for a in call(client, "GET", "/v1/hive/approvals")] == [gate.id, spawn.id]
    assert call(client, "GET", f"/v1/hive/approvals/{gate.id}")["approval"]["title"] == "push"
    threads = call(client, "GET", "/v1/hive/threads", agent="bob")
    assert threads["approvals"] == [] and [q["id"] for q in threads["questions"]] == [asked.id]

    denied = call(client, "POST", f"/v1/hive/approvals/{gate.id}/deny", {"reason": "not yet"})
    assert denied["state"] == "denied" and denied["resolved_by"] == "operator"
    done = call(client, "POST", f"/v1/hive/approvals/{spawn.id}/approve", {})
    assert done["state"] == "approved" and done["result"]["spawned"] == "carol"
    assert agent_exists(store, "carol")
    destroy = approvals.propose(store, kind="destroy", proposer="alice", title="destroy carol",
                                payload={"name": "carol"})  # fmt: skip
    to_carol = questions.ask(store, asker="alice", question="are you there?", to="carol")
    call(client, "POST", f"/v1/hive/approvals/{destroy.id}/approve")
    assert not agent_exists(store, "carol")
    bodies = [m.body for m in broker.inbox(store, "alice") if m.kind == "approval"]
    assert len(bodies) == 3 and "not yet" in bodies[0]
    # Removing carol closed the question waiting for her answer.
    assert questions.get(store, to_carol.id).state == "expired"
    [sentinel] = [m for m in broker.inbox(store, "alice") if m.ref == to_carol.id]
    assert "carol was removed" in sentinel.body

    assert [q["id"] for q in call(client, "GET", "/v1/hive/questions")] == [asked.id]
    answered = call(client, "POST", f"/v1/hive/questions/{asked.id}/answer", {"text": "main"})
    assert answered["answerer"] == "operator"
    assert call(client, "GET", "/v1/hive/questions") == []
    assert call(client, "GET", "/v1/hive/threads")["approvals"] == []

    with pytest.raises(ThreadNotFound):
        call(client, "POST", "/v1/hive/approvals/a-none/approve")
    self_ask = questions.ask(store, asker="alice", question="?", to="bob")
    questions.answer(store, self_ask.id, "done", answerer="bob")
    with pytest.raises(ThreadStateError, match="already answered by bob"):
        call(client, "POST", f"/v1/hive/questions/{self_ask.id}/answer", {"text": "again"})


def test_a_refused_merge_comes_back_as_itself(
    daemon: tuple[DaemonClient, Store], repo: Path
) -> None:
    client, store = daemon
    agent_commit(repo, "alice", {"new.txt": "x\n"})
    proposal = asyncio.run(approvals.propose_apply(store, proposer="alice", repo=repo,
                                                   target="main"))  # fmt: skip
    git(repo, "checkout", "-q", "main")
    view = call(client, "GET", f"/v1/hive/approvals/{proposal.id}")
    assert "main is checked out in" in view["preview"]["refused"]
    with pytest.raises(MergeRefused, match="main is checked out in"):
        call(client, "POST", f"/v1/hive/approvals/{proposal.id}/approve")
    git(repo, "checkout", "-q", "work")
    done = call(client, "POST", f"/v1/hive/approvals/{proposal.id}/approve", {"reason": "ok"})
    assert done["result"]["how"] == "fast-forward"
    assert git(repo, "rev-parse", "main") == proposal.payload["head"]
