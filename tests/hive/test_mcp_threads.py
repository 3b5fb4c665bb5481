"""The thread tools over MCP (questions, reminders, proposals, open threads, the manager's
gated stop/restart), each acting as the agent whose socket the call came in on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.hive.conftest import agent_commit
from tests.hive.mcp_client import call, connect

from hal9999.hive import approvals, broker, questions, reminders
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Hive
from hal9999.hive.store import AgentRecord, insert_agent
from hal9999.store import Store


@dataclass
class FakeLoop:
    """The turn loop's stop/start, recorded."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    async def stop_agent(self, name: str, reason: str = "") -> None:
        self.calls.append(("stop", name))

    async def start_agent(self, name: str) -> None:
        self.calls.append(("start", name))


@dataclass
class World:
    store: Store
    hub: McpHub
    loop: FakeLoop
    repo: Path


@pytest.fixture
async def world(tmp_path: Path, repo: Path) -> AsyncIterator[World]:
    home = tmp_path / "home"
    store = Store.open(home)
    now = time.time()
    for name, kind in (("alpha", "agent"), ("beta", "agent"), ("boss", "manager")):
        record = AgentRecord(
            name=name, agent="claude", provider="bwrap", repo=str(repo), kind=kind,
            created_at=now, updated_at=now,
        )  # fmt: skip
        insert_agent(store, record)
    loop = FakeLoop()
    hub = McpHub(Hive(store=store, home=home, lifecycle=loop))
    await hub.sync()
    yield World(store, hub, loop, repo)
    await hub.close_all()
    store.close()


def sock(world: World, name: str) -> Path:
    return world.hub.paths.socket(name)


async def test_a_question_to_a_peer_is_answered_into_the_askers_mailbox(world: World) -> None:
    async with connect(sock(world, "alpha")) as alpha:
        failed, asked = await call(alpha, "ask", question="what is 6*7?", to="beta")
        assert not failed, asked
        failed, text = await call(alpha, "ask", question="me?", to="alpha")
        assert failed and "cannot ask itself" in text and "\n" not in text
    [note] = broker.inbox(world.store, "beta")
    assert (note.sender, note.kind, note.ref) == ("alpha", "question", asked["question"])
    async with connect(sock(world, "boss")) as boss:  # neither the target nor the operator
        failed, text = await call(boss, "answer", id=asked["question"], text="41")
        assert failed, text
    async with connect(sock(world, "beta")) as beta:
        failed, done = await call(beta, "answer", id=asked["question"], text="42")
        assert not failed and done == {"answered": asked["question"], "to": "alpha"}
    answered = questions.get(world.store, asked["question"])
    assert (answered.answer, answered.answerer) == ("42", "beta")
    [reply] = broker.inbox(world.store, "alpha")
    assert reply.kind == "answer" and "42" in reply.body


async def test_remind_sets_a_reminder_and_refuses_a_file_outside(world: World) -> None:
    async with connect(sock(world, "alpha")) as alpha:
        failed, got = await call(alpha, "remind", text="check CI", in_s=600)
        assert not failed and got["reminder"].startswith("r")
        assert abs(got["due"] - (time.time() + 600)) < 30
        failed, text = await call(alpha, "remind", text="x", in_s=60, at=time.time() + 60)
        assert failed and "either at or in" in text
        failed, text = await call(alpha, "remind", text="x", in_s=60, file="/etc/passwd")
        assert failed and text.startswith("usage:"), text


async def test_reminders_that_fire_at_once_are_bounded_like_messages(world: World) -> None:
    # A reminder due right away frees its place among the 200 pending as the clock fires
    # it, and its message comes from hal, past the broker's rate limit: an agent looping on
    # remind(in_s=0.001) filled its mailbox, the messages table and the events unbounded.
    limit = broker.limits.rate_per_minute
    async with connect(sock(world, "alpha")) as alpha:
        for n in range(limit):
            failed, got = await call(alpha, "remind", text=f"again {n}", in_s=0.001)
            assert not failed, got
            reminders.fire_due(world.store, time.time() + 1)  # the daemon's clock
        failed, text = await call(alpha, "remind", text="once more", in_s=0.001)
        assert failed and text.startswith("hive_limited:") and "\n" not in text, text
    assert len(broker.inbox(world.store, "alpha")) == limit


async def test_questions_that_expire_at_once_are_bounded_like_messages(world: World) -> None:
    # The same with a question to the operator (no message, so no broker guard) whose ttl
    # runs out at once: its place among the 50 open ones comes free and hal's sentinel
    # answer lands in the asker's mailbox, as often as the agent asks.
    limit = broker.limits.rate_per_minute
    async with connect(sock(world, "alpha")) as alpha:
        for n in range(limit):
            failed, got = await call(alpha, "ask", question=f"again {n}?", ttl_s=0.001)
            assert not failed, got
            questions.expire_due(world.store, time.time() + 1)  # the daemon's clock
        failed, text = await call(alpha, "ask", question="once more?", ttl_s=0.001)
        assert failed and text.startswith("hive_limited:") and "\n" not in text, text
    assert len(broker.inbox(world.store, "alpha")) == limit


async def test_proposals_reach_the_queue_and_the_decision_reaches_the_agent(
    world: World,
) -> None:
    agent_commit(world.repo, "alpha", {"app.py": "def add(a, b):\n    return a + b\n"})
    async with connect(sock(world, "alpha")) as alpha:
        failed, applied = await call(alpha, "propose", kind="apply", summary="fix add")
        assert not failed, applied
        assert applied["title"].startswith("apply hal/agent/alpha onto main: 1 commit")
        failed, text = await call(alpha, "propose", kind="spawn", summary="help")
        assert failed and text == "usage: a spawn proposal needs a name"
        failed, spawn = await call(
            alpha, "propose", kind="spawn", summary="a tester", name="tester", agent="codex"
        )
        assert not failed, spawn
        failed, mine = await call(alpha, "open_threads")
        assert {a["id"] for a in mine["approvals"]} == {applied["proposal"], spawn["proposal"]}
    approvals.deny(world.store, spawn["proposal"], reason="not now")
    async with connect(sock(world, "alpha")) as alpha:
        failed, got = await call(alpha, "inbox")
    assert any("not now" in m["body"] and m["kind"] == "approval" for m in got["messages"])
    pending = approvals.get(world.store, applied["proposal"])
    assert pending.state == "pending" and pending.payload["branch"] == "hal/agent/alpha"


async def test_the_manager_sees_the_hive_and_its_stop_waits_for_approval(world: World) -> None:
    async with connect(sock(world, "alpha")) as alpha:
        await call(alpha, "ask", question="anyone?", to="beta")
        names = {t.name for t in (await alpha.list_tools()).tools}
    assert {"ask", "answer", "remind", "propose", "open_threads"} <= names
    assert not {"request_spawn", "stop", "restart", "list_agents"} & names
    async with connect(sock(world, "boss")) as boss:
        failed, threads = await call(boss, "open_threads")
        assert [q["from"] for q in threads["questions"]] == ["alpha"]  # hive-wide
        failed, spawn = await call(boss, "request_spawn", name="docs", agent="claude", role="docs")
        assert not failed and approvals.get(world.store, spawn["proposal"]).kind == "spawn"
        failed, gate = await call(boss, "stop", name="beta")
        assert not failed and "approval=" in gate["note"]
        failed, text = await call(boss, "stop", name="beta", approval=gate["proposal"])
        assert failed and "is pending, not approved" in text
        assert world.loop.calls == []
        await approvals.approve(world.store, gate["proposal"])
        failed, text = await call(boss, "restart", name="beta", approval=gate["proposal"])
        assert failed and "is not your restart of beta" in text
        failed, done = await call(boss, "stop", name="beta", approval=gate["proposal"])
        assert not failed and done == {"done": "stop", "agent": "beta"}
        failed, text = await call(boss, "stop", name="beta", approval=gate["proposal"])
        assert failed and "carried out already" in text
    assert world.loop.calls == [("stop", "beta")]


async def test_one_agents_apply_proposals_run_their_git_one_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each apply proposal runs several host git processes before it can fail (a target that
    # does not exist): an agent with calls in flight on its connections ran as many at once.
    from hal9999.hive import merge

    running, most = 0, 0
    real_pin = merge.pin

    async def counted(*args: object, **kwargs: object) -> merge.ApplyRange:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return await real_pin(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            running -= 1

    monkeypatch.setattr(merge, "pin", counted)
    async with connect(sock(world, "alpha")) as alpha:
        results = await asyncio.gather(*(
            call(alpha, "propose", kind="apply", summary="x", target=f"nowhere-{n}")
            for n in range(8)
        ))  # fmt: skip
    assert all(failed and "there is no branch" in text for failed, text in results), results
    assert most == 1, most
