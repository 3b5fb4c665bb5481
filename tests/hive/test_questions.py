"""Questions: asked at once, answered into the asker's mailbox, only by the target (or the
operator overriding), never of oneself, and a TTL that ends in a clear sentinel answer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from tests.hive.conftest import hive_events, make_agent

from hal9999.errors import (
    HiveLimited,
    ThreadForbidden,
    ThreadNotFound,
    ThreadStateError,
    UsageError,
)
from hal9999.hive import approvals, broker, questions, reminders
from hal9999.hive.threads import close_for_removed, open_count, open_threads
from hal9999.store import Store


def test_a_peer_question_reaches_the_target_and_the_answer_the_asker(store: Store) -> None:
    asked = questions.ask(store, asker="alice", question="Which port does the API use?",
                          to="bob")  # fmt: skip
    [incoming] = broker.inbox(store, "bob")
    assert (incoming.kind, incoming.sender, incoming.ref) == ("question", "alice", asked.id)
    assert "Which port" in incoming.body
    assert [q.id for q in open_threads(store, "bob").questions] == [asked.id]
    assert [q.id for q in open_threads(store, "alice").questions] == [asked.id]
    assert (open_count(store, "alice"), open_count(store, "bob")) == (1, 1)
    answered = questions.answer(store, asked.id, "8080", answerer="bob")
    assert (answered.state, answered.answer, answered.answerer) == ("answered", "8080", "bob")
    [reply] = broker.inbox(store, "alice")
    assert (reply.kind, reply.sender, reply.ref) == ("answer", "bob", asked.id)
    assert reply.body.endswith("\n8080") and "Which port" in reply.body
    assert open_threads(store).count == 0 and open_count(store, "bob") == 0
    with pytest.raises(ThreadStateError, match="already answered by bob"):
        questions.answer(store, asked.id, "9090", answerer="bob")
    assert [e["type"] for e in hive_events(store)] == ["question_asked", "question_answered"]


def test_an_operator_question_waits_in_the_operators_queue(store: Store) -> None:
    asked = questions.ask(store, asker="alice", question="May I delete the old API?")
    assert questions.list_questions(store, target="operator") == [asked]
    assert broker.inbox(store, "operator") == []  # the queue, not a mailbox message
    questions.answer(store, asked.id, "yes", answerer="operator")
    [reply] = broker.inbox(store, "alice")
    assert reply.kind == "answer" and reply.sender == "operator"
    assert questions.list_questions(store, target="operator") == []


def test_only_the_target_or_the_operator_may_answer(store: Store) -> None:
    # An agent finds only the questions asked of it: the refusal named the full id and the
    # target of any question whose id prefix an agent guessed.
    to_operator = questions.ask(store, asker="alice", question="deploy?")
    for key in (to_operator.id, to_operator.id[:3]):
        with pytest.raises(ThreadNotFound, match="matches no question asked of bob") as caught:
            questions.answer(store, key, "yes, do it", answerer="bob")
        said = caught.value.one_line()
        assert "operator" not in said and (key == to_operator.id or to_operator.id not in said)
    with pytest.raises(ThreadNotFound, match="asked of alice"):
        questions.answer(store, to_operator.id, "yes", answerer="alice")  # self-approval
    to_bob = questions.ask(store, asker="alice", question="port?", to="bob")
    with pytest.raises(ThreadNotFound, match="asked of alice"):
        questions.answer(store, to_bob.id, "1", answerer="alice")
    assert broker.inbox(store, "alice") == []
    overridden = questions.answer(store, to_bob.id, "443", answerer="operator")
    assert overridden.answerer == "operator"
    assert "operator (for bob)" in broker.inbox(store, "alice")[0].body


def test_asking_oneself_or_nobody_is_refused(store: Store) -> None:
    with pytest.raises(ThreadForbidden, match="alice cannot ask itself"):
        questions.ask(store, asker="alice", question="hm?", to="alice")
    with pytest.raises(UsageError, match="neither 'operator' nor an agent"):
        questions.ask(store, asker="alice", question="hm?", to="nobody")
    with pytest.raises(UsageError, match="neither 'operator' nor an agent"):
        questions.ask(store, asker="alice", question="hm?", to="hal")
    with pytest.raises(UsageError, match="question is empty"):
        questions.ask(store, asker="alice", question=" \n", to="bob")
    with pytest.raises(UsageError, match="over the limit"):
        questions.ask(store, asker="alice", question="x" * 70000, to="bob")
    with pytest.raises(UsageError, match="ttl"):
        questions.ask(store, asker="alice", question="hm?", ttl_s=0)
    assert questions.list_questions(store, open_only=False) == []


def test_a_question_past_its_ttl_gets_the_sentinel_answer(store: Store) -> None:
    asked = questions.ask(store, asker="alice", question="Shall I refactor?", to="bob",
                          ttl_s=120)  # fmt: skip
    assert questions.expire_due(store, now=time.time() + 60) == []
    [expired] = questions.expire_due(store, now=time.time() + 121)
    assert expired.id == asked.id
    stored = questions.get(store, asked.id)
    assert (stored.state, stored.answerer) == ("expired", "hal")
    [reply] = broker.inbox(store, "alice")
    assert (reply.kind, reply.sender, reply.ref) == ("answer", "hal", asked.id)
    assert reply.body.startswith(questions.EXPIRED_PREFIX) and "Shall I refactor?" in reply.body
    with pytest.raises(ThreadStateError, match="already expired"):
        questions.answer(store, asked.id, "too late", answerer="bob")
    assert questions.expire_due(store, now=time.time() + 500) == []  # once only
    assert [e["type"] for e in hive_events(store)][-1] == "question_expired"


def test_an_answer_after_the_deadline_but_before_the_sweep_expires_it(store: Store) -> None:
    asked = questions.ask(store, asker="alice", question="?", to="bob", ttl_s=0.05)
    time.sleep(0.1)
    with pytest.raises(ThreadStateError, match="has expired"):
        questions.answer(store, asked.id, "late", answerer="bob")
    [reply] = broker.inbox(store, "alice")
    assert reply.body.startswith(questions.EXPIRED_PREFIX)


def test_an_agent_cannot_flood_others_with_questions(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(questions, "MAX_OPEN", 2)
    questions.ask(store, asker="alice", question="1?", to="bob")
    questions.ask(store, asker="alice", question="2?")
    with pytest.raises(UsageError, match="already has 2 unanswered questions"):
        questions.ask(store, asker="alice", question="3?", to="bob")
    assert len(broker.inbox(store, "bob")) == 1  # the refused one never reached bob
    questions.ask(store, asker="bob", question="mine?", to="alice")


def test_removing_an_agent_closes_its_threads(store: Store) -> None:
    mine = approvals.propose(store, kind="tool", proposer="alice", title="t", payload={})
    asked_by = questions.ask(store, asker="alice", question="deploy?")
    asked_of = questions.ask(store, asker="bob", question="alice, which port?", to="alice")
    reminders.remind(store, agent="alice", text="later", in_s=60)
    others = questions.ask(store, asker="bob", question="ok?")
    before = len(broker.inbox(store, "alice"))
    assert close_for_removed(store, "alice") == 4
    assert approvals.get(store, mine.id).state == "expired"
    assert approvals.get(store, mine.id).reason == "alice was removed"
    assert questions.get(store, asked_by.id).state == "expired"
    assert questions.get(store, asked_of.id).state == "expired"
    [sentinel] = [m for m in broker.inbox(store, "bob") if m.kind == "answer"]
    assert sentinel.ref == asked_of.id and "alice was removed" in sentinel.body
    assert sentinel.body.startswith(questions.EXPIRED_PREFIX)
    assert len(broker.inbox(store, "alice")) == before  # nothing sent to the removed agent
    assert reminders.list_reminders(store, "alice") == []
    assert reminders.fire_due(store, now=time.time() + 120) == []
    assert questions.get(store, others.id).state == "open"


def test_a_question_the_broker_refuses_is_never_asked(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "limits", broker.BrokerLimits(rate_per_minute=1))
    broker.send(store, sender="alice", recipient="bob", body="hello")
    with pytest.raises(HiveLimited):
        questions.ask(store, asker="alice", question="port?", to="bob")
    assert questions.list_questions(store, open_only=False) == []
    assert [e["type"] for e in hive_events(store)] == []


def test_questions_asked_at_once_stay_within_the_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent's MCP calls run concurrently, each in a worker thread: every one counted the
    # open questions before any inserted its own.
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(questions, "MAX_OPEN", 2)
    barrier = threading.Barrier(8)

    def ask(n: int) -> bool:
        barrier.wait()
        try:
            questions.ask(store, asker="alice", question=f"q{n}?")
        except UsageError:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        asked = list(pool.map(ask, range(8)))
    assert sum(asked) == 2, asked


def test_a_new_agent_of_a_removed_ones_name_inherits_none_of_its_history(
    tmp_path: Path,
) -> None:
    """Its mailbox (read mail too), its turns and their statistics go with the old agent;
    what the old agent sent others stays theirs."""
    from hal9999.hive import agents, stats

    home = tmp_path / "halhome"
    with Store.open(home) as store:
        make_agent(store, "eve")
        make_agent(store, "bob")
        for body in ("first life: secret plan", "also old"):
            broker.send(store, sender="operator", recipient="eve", body=body)
        broker.mark(store, [m.id for m in broker.inbox(store, "eve")][:1], "read")
        sent = broker.send(store, sender="eve", recipient="bob", body="hello from the old eve")
        turn = stats.start_turn(store, "eve", None, "message", [])
        stats.finish_turn(store, turn, "ok", {}, None)
        assert stats.turns(store, "eve") and broker.inbox(store, "eve", include_read=True)
        agents.forget(store, home, "eve")
        make_agent(store, "eve")
        assert broker.inbox(store, "eve", include_read=True) == []
        assert stats.turns(store, "eve") == []
        assert stats.summary(store, "eve")["turns"] == 0
        assert [m.id for m in broker.inbox(store, "bob")] == [sent.id]
