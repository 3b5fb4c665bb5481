"""The hive's tables and broker on a real SQLite store: names, durability, states that only
move forward, hive events with a gseq from the task events' counter, the guards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.hive.crash_helpers import killed

from hal9999.errors import AgentNotFound, HiveError, HiveLimited, NotFoundError
from hal9999.events.bus import EventBus
from hal9999.events.hive import AgentState, MessageSent
from hal9999.hive import broker
from hal9999.hive.agents import set_state
from hal9999.hive.broker import OPERATOR, SYSTEM, inbox, mark, send
from hal9999.hive.store import (
    AgentRecord,
    agent_exists,
    check_name,
    get_agent,
    hive_events_after,
    insert_agent,
    record_hive_event,
    set_publisher,
)
from hal9999.store import Store


def add_agent(store: Store, name: str) -> AgentRecord:
    now = time.time()
    record = AgentRecord(
        name=name, agent="custom", provider="local", created_at=now, updated_at=now
    )
    return insert_agent(store, record)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "home") as opened:
        yield opened


@pytest.fixture(autouse=True)
def _fresh_broker() -> Iterator[None]:
    saved = broker.BrokerLimits(**vars(broker.limits))
    yield
    broker.limits = saved
    broker.set_waker(None)
    set_publisher(None)


@pytest.mark.parametrize("name", ["", "Alice", "9lives", "a" * 33, "a_b", "a b", "a/b", "..", "é"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(HiveError, match="not a valid agent name"):
        check_name(name)


@pytest.mark.parametrize("name", ["operator", "hal", "you"])  # `you`: the CLI's operator
def test_reserved_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(HiveError, match="reserved"):
        add_agent(store, name)
    assert not agent_exists(store, name)


def test_a_taken_name_is_refused(store: Store) -> None:
    add_agent(store, "alice")
    with pytest.raises(HiveError, match="already exists"):
        add_agent(store, "alice")


def test_send_is_durable_before_it_returns_and_wakes_the_recipient(
    store: Store, tmp_path: Path
) -> None:
    add_agent(store, "alice")
    woken: list[str] = []
    broker.set_waker(woken.append)
    message = send(store, sender=OPERATOR, recipient="alice", body="hello")
    assert woken == ["alice"]
    # Another connection (another process would see the same) reads it committed.
    with Store.open(tmp_path / "home") as other:
        [seen] = inbox(other, "alice")
    assert seen == message and seen.state == "sent"


def test_unknown_parties_and_bad_bodies_are_refused(store: Store) -> None:
    add_agent(store, "alice")
    with pytest.raises(AgentNotFound, match="bob"):
        send(store, sender=OPERATOR, recipient="bob", body="hi")
    with pytest.raises(AgentNotFound, match="mallory"):
        send(store, sender="mallory", recipient="alice", body="hi")
    with pytest.raises(HiveError, match="itself"):
        send(store, sender="alice", recipient="alice", body="hi")
    with pytest.raises(HiveError, match="receives no messages"):
        send(store, sender="alice", recipient=SYSTEM, body="hi")
    with pytest.raises(HiveError, match="empty"):
        send(store, sender=OPERATOR, recipient="alice", body="  \n")
    with pytest.raises(HiveError, match="characters"):
        send(store, sender=OPERATOR, recipient="alice", body="x" * (broker.MAX_BODY_CHARS + 1))
    assert inbox(store, "alice") == []


def test_states_only_move_forward(store: Store) -> None:
    add_agent(store, "alice")
    first = send(store, sender=OPERATOR, recipient="alice", body="one")
    second = send(store, sender=OPERATOR, recipient="alice", body="two")
    mark(store, [first.id], "read")
    mark(store, [first.id, second.id], "delivered")  # first stays read
    states = {m.id: m.state for m in inbox(store, "alice", include_read=True)}
    assert states == {first.id: "read", second.id: "delivered"}
    assert [m.id for m in inbox(store, "alice")] == [second.id]


def test_a_dropped_message_leaves_the_mailbox_for_good(store: Store) -> None:
    add_agent(store, "alice")
    bad = send(store, sender=OPERATOR, recipient="alice", body="delete every branch")
    taken = send(store, sender=OPERATOR, recipient="alice", body="taken by a turn")
    kept = send(store, sender=OPERATOR, recipient="alice", body="fine")
    mark(store, [taken.id], "delivered")  # a stopped turn's: the next one would get it again
    assert broker.drop(store, "alice", bad.id).body == "delete every branch"
    assert broker.drop(store, "alice", taken.id).id == taken.id
    assert [m.id for m in inbox(store, "alice", include_read=True)] == [kept.id]
    dropped = [e for e in hive_events_after(store, 0) if e.type == "message_dropped"]
    assert [(e.agent, e.ids) for e in dropped] == [("alice", [bad.id]), ("alice", [taken.id])]
    mark(store, [kept.id], "read")
    for agent, message_id in (("alice", bad.id), ("alice", kept.id), ("bob", kept.id)):
        with pytest.raises(NotFoundError, match="no unread message"):  # gone, read, not bob's
            broker.drop(store, agent, message_id)
    assert [m.id for m in inbox(store, "alice", include_read=True)] == [kept.id]


def test_hive_events_share_the_task_events_counter(store: Store) -> None:
    add_agent(store, "alice")
    [task_gseq] = store.record_events("t1", [(1, "phase", 1.0)])
    message = send(store, sender=OPERATOR, recipient="alice", body="hi")
    mark(store, [message.id], "delivered")
    recorded = record_hive_event(store, AgentState(agent="alice", state="running"))
    [after_task] = store.record_events("t1", [(2, "phase", 2.0)])
    events = hive_events_after(store, 0)
    assert [e.type for e in events] == ["message_sent", "message_delivered", "agent_state"]
    gseqs = [e.gseq for e in events]
    assert task_gseq < gseqs[0] < gseqs[1] < gseqs[2] == recorded.gseq < after_task
    assert hive_events_after(store, gseqs[0]) == events[1:]
    sent = events[0]
    assert isinstance(sent, MessageSent) and sent.id == message.id and sent.chars == 2
    assert "hi" not in sent.model_dump_json()  # the body stays in the broker


async def test_hive_events_reach_the_bus_once(store: Store) -> None:
    bus = EventBus()
    bus.attach(asyncio.get_running_loop())
    set_publisher(bus.publish_hive)
    subscription = bus.subscribe_hive()
    add_agent(store, "alice")
    # From a worker thread, as the daemon's API sends.
    message = await asyncio.to_thread(send, store, sender=OPERATOR, recipient="alice", body="x")
    event = await asyncio.wait_for(subscription.get(), 5)
    assert isinstance(event, MessageSent) and event.id == message.id
    bus.publish_hive(event)  # the same gseq again is dropped
    record_hive_event(store, AgentState(agent="alice", state="running"))
    following = await asyncio.wait_for(subscription.get(), 5)
    assert isinstance(following, AgentState)


def test_an_agent_over_its_rate_limit_is_refused(store: Store) -> None:
    broker.limits.rate_per_minute = 3
    add_agent(store, "alice")
    for n in range(3):
        send(store, sender="alice", recipient=OPERATOR, body=f"m{n}")
    with pytest.raises(HiveLimited, match="3 messages in the last minute"):
        send(store, sender="alice", recipient=OPERATOR, body="one too many")
    assert len(inbox(store, OPERATOR)) == 3
    assert [e.type for e in hive_events_after(store, 0)][-1] == "hive_guard"
    for _ in range(50):  # an agent retrying in a loop: refused each time, recorded once
        with pytest.raises(HiveLimited):
            send(store, sender="alice", recipient=OPERATOR, body="again")
    guards = [e for e in hive_events_after(store, 0) if e.type == "hive_guard"]
    assert len(guards) == 1 and guards[0].guard == "rate_limit"  # type: ignore[attr-defined]
    send(store, sender=OPERATOR, recipient="alice", body="the operator is not limited")


def test_an_agents_unread_mail_to_the_operator_is_capped_until_the_operator_reads_it(
    store: Store,
) -> None:
    broker.limits.rate_per_minute = 0
    broker.limits.unread_to_operator_chars = 1000
    add_agent(store, "alice")
    add_agent(store, "bob")
    sent = [send(store, sender="alice", recipient=OPERATOR, body="x" * 300) for _ in range(3)]
    with pytest.raises(HiveLimited, match="900 characters of messages to the operator not read"):
        send(store, sender="alice", recipient=OPERATOR, body="y" * 101)
    send(store, sender="alice", recipient=OPERATOR, body="y" * 100)  # exactly at the cap
    with pytest.raises(HiveLimited, match="limit of 1000"):
        send(store, sender="alice", recipient=OPERATOR, body="z")
    assert len(inbox(store, OPERATOR)) == 4
    # Other agents, and mail between agents, have their own room.
    send(store, sender="bob", recipient=OPERATOR, body="b" * 1000)
    send(store, sender="alice", recipient="bob", body="a" * 1000)
    # Delivered is not read: only reading frees the room.
    mark(store, [m.id for m in sent], "delivered")
    with pytest.raises(HiveLimited):
        send(store, sender="alice", recipient=OPERATOR, body="z")
    mark(store, [m.id for m in sent], "read")
    send(store, sender="alice", recipient=OPERATOR, body="z" * 900)


def test_an_agents_unread_mail_to_other_agents_is_capped_until_they_read_it(
    store: Store,
) -> None:
    # A stopped agent takes no turn, so its mail stays unread, and retention never removes
    # unread mail: another agent sending it 64 KiB 30 times a minute grew the store by
    # gigabytes a day, for good. Now an agent's unread mail to agents is bounded like its
    # mail to the operator, and reading it frees the room.
    broker.limits.rate_per_minute = 0
    broker.limits.unread_to_agents_chars = 1000
    for name in ("mallory", "bob", "carol"):
        add_agent(store, name)
    set_state(store, "bob", "stopped", "stopped by the operator")
    sent = [send(store, sender="mallory", recipient="bob", body="x" * 300) for _ in range(3)]
    with pytest.raises(HiveLimited, match="900 characters of messages to agents not read"):
        send(store, sender="mallory", recipient="bob", body="y" * 101)
    with pytest.raises(HiveLimited, match="limit of 1000"):  # another recipient: the same room
        send(store, sender="mallory", recipient="carol", body="y" * 101)
    send(store, sender="mallory", recipient="carol", body="y" * 100)  # exactly at the cap
    assert len(inbox(store, "bob")) == 3
    # Others' mail to bob, and mallory's to the operator, have their own room.
    send(store, sender="carol", recipient="bob", body="c" * 1000)
    send(store, sender="mallory", recipient=OPERATOR, body="m" * 1000)
    mark(store, [m.id for m in sent], "delivered")  # delivered is not read
    with pytest.raises(HiveLimited):
        send(store, sender="mallory", recipient="bob", body="z")
    mark(store, [m.id for m in sent], "read")
    send(store, sender="mallory", recipient="bob", body="z" * 900)
    broker.limits.unread_to_agents_chars = 0  # no limit
    send(store, sender="mallory", recipient="bob", body="z" * 1000)


def test_two_agents_in_a_ping_pong_loop_are_stopped_and_the_operator_told(store: Store) -> None:
    broker.limits.loop_messages = 6
    add_agent(store, "alice")
    add_agent(store, "bob")
    pair = ("alice", "bob")
    with pytest.raises(HiveLimited, match="message loop"):
        for n in range(10):
            send(store, sender=pair[n % 2], recipient=pair[(n + 1) % 2], body=f"ping {n}")
    assert n == 5  # the sixth message is refused
    assert get_agent(store, "alice").state == "stopped"
    assert get_agent(store, "bob").state == "stopped"
    [notice] = inbox(store, OPERATOR)
    assert notice.sender == SYSTEM and "bob and alice exchanged 6 messages" in notice.body
    assert "hal agent start alice" in notice.body and "hal agent start bob" in notice.body


def test_a_one_way_flood_never_stops_the_agent_it_floods(store: Store) -> None:
    # The loop guard counted the pair's messages whichever way they went: any agent could
    # stop any other (the manager too) by sending it loop_messages messages, a stop that
    # otherwise takes the operator's approval. A loop goes both ways.
    broker.limits.rate_per_minute = 0
    add_agent(store, "mallory")
    add_agent(store, "manager")
    for n in range(broker.limits.loop_messages * 2):
        send(store, sender="mallory", recipient="manager", body=f"flood {n}")
    send(store, sender="manager", recipient="mallory", body="stop that")
    assert get_agent(store, "manager").state == "sleeping"
    assert get_agent(store, "mallory").state == "sleeping"
    assert inbox(store, OPERATOR) == []


def test_an_agent_flooding_a_peer_that_replies_now_and_then_stops_itself_not_the_peer(
    store: Store,
) -> None:
    # The guard stopped both once the peer had sent a quarter of the exchange: an agent got
    # any peer stopped (the manager too, a stop that takes the operator's approval) by
    # flooding it until it had replied that often. Only a side that sent at least half goes.
    broker.limits.rate_per_minute = 0
    add_agent(store, "mallory")
    add_agent(store, "manager")
    with pytest.raises(HiveLimited, match="stopped mallory as a message loop"):
        for n in range(broker.limits.loop_messages * 4):
            send(store, sender="mallory", recipient="manager", body=f"flood {n}")
            if n % 4 == 3:  # a reply to one message in four
                send(store, sender="manager", recipient="mallory", body="noted")
    assert n >= broker.limits.loop_messages  # the guard's counts were reached
    assert get_agent(store, "manager").state == "sleeping"
    assert get_agent(store, "mallory").state == "stopped"
    send(store, sender="manager", recipient="mallory", body="noted")  # goes, told once
    [notice] = inbox(store, OPERATOR)
    assert "stopped mallory as a message loop" in notice.body
    assert "hal agent start mallory" in notice.body and "start manager" not in notice.body


# Alice's sixth message to bob in a ping-pong loop of 6 (the guard's send), in a process
# killed after its `after`-th commit (crash_helpers).
LOOP_SEND = """
from hal9999.errors import HiveLimited
from hal9999.hive import broker
from hal9999.hive.agents import set_state

broker.limits.loop_messages = 6
try:
    broker.send(store, sender="alice", recipient="bob", body="ping 5")
except HiveLimited:
    pass
"""


def test_the_loop_guard_stops_both_agents_and_tells_the_operator_or_nothing_whatever_commit_a_kill_follows(  # noqa: E501
    tmp_path: Path,
) -> None:
    for after in range(1, 6):
        home = tmp_path / f"home-{after}"
        with Store.open(home) as store:
            add_agent(store, "alice")
            add_agent(store, "bob")
            for n in range(5):
                send(store, sender=("alice", "bob")[n % 2], recipient=("bob", "alice")[n % 2],
                     body=f"ping {n}")  # fmt: skip
        finished = killed(home, LOOP_SEND, "", after).returncode == 0
        with Store.open(home) as store:
            states = {get_agent(store, name).state for name in ("alice", "bob")}
            told = [m.body for m in inbox(store, OPERATOR)]
            guards = store._query("SELECT 1 FROM hive_events WHERE type = 'hive_guard'")
            stops = store._query(
                "SELECT agent FROM hive_events WHERE type = 'agent_state' AND body LIKE"
                " '%message loop%' ORDER BY agent"
            )
        if states == {"stopped"}:  # the guard acted: all of it
            assert len(told) == 1 and "message loop" in told[0], after
            assert len(guards) == 1 and [r[0] for r in stops] == ["alice", "bob"], after
        else:  # none of it: both awake, nobody told
            assert states == {"sleeping"} and told == [] and guards == [] == stops, after
        if finished:
            assert states == {"stopped"}
            return
    pytest.fail("the loop guard's send did not finish within 5 commits")


def test_agents_the_operator_starts_again_after_a_loop_stop_are_not_stopped_at_their_next_message(
    store: Store,
) -> None:
    # The window still held the messages that stopped them: the first message after
    # `hal agent start` stopped them again at once, for the messages of before.
    broker.limits.loop_messages = 6
    add_agent(store, "alice")
    add_agent(store, "bob")
    pair = ("alice", "bob")
    with pytest.raises(HiveLimited, match="message loop"):
        for n in range(10):
            send(store, sender=pair[n % 2], recipient=pair[(n + 1) % 2], body=f"ping {n}")
    for name in pair:  # as TurnLoop.start_agent does
        set_state(store, name, "sleeping", "started by the operator", loop_since=time.time())
    for n in range(5):
        send(store, sender=pair[n % 2], recipient=pair[(n + 1) % 2], body=f"again {n}")
    assert [get_agent(store, name).state for name in pair] == ["sleeping", "sleeping"]
    with pytest.raises(HiveLimited, match="message loop"):  # a loop again is caught again
        send(store, sender="bob", recipient="alice", body="and again")
    assert get_agent(store, "alice").state == "stopped"


def test_an_operator_message_keeps_a_busy_pair_out_of_the_loop_guard(store: Store) -> None:
    broker.limits.loop_messages = 4
    add_agent(store, "alice")
    add_agent(store, "bob")
    send(store, sender=OPERATOR, recipient="alice", body="work with bob on this")
    for n in range(8):
        send(store, sender=("alice", "bob")[n % 2], recipient=("bob", "alice")[n % 2], body="x")
    assert get_agent(store, "alice").state == "sleeping"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["delivered", "read"]))))
def test_marks_in_any_order_never_move_a_message_back(
    tmp_path: Path, steps: list[tuple[int, str]]
) -> None:
    with Store.open(tmp_path / f"h{len(steps)}-{time.monotonic_ns()}") as store:
        add_agent(store, "alice")
        ids = [send(store, sender=OPERATOR, recipient="alice", body=str(n)).id for n in range(5)]
        highest = dict.fromkeys(ids, 0)
        for index, state in steps:
            mark(store, [ids[index]], state)  # type: ignore[arg-type]
            highest[ids[index]] = max(highest[ids[index]], {"delivered": 1, "read": 2}[state])
        got = {m.id: m.state for m in inbox(store, "alice", include_read=True)}
        assert got == {i: ("sent", "delivered", "read")[h] for i, h in highest.items()}
