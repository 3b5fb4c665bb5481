"""Each MCP tool through the SDK's client over an agent's socket: what it does, who it acts
as (the socket's agent, never a name sent), and its refusals as one-line tool errors."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from tests.hive.mcp_client import call, connect
from tests.support.hive import World, _git_repo

from hal9999.config import HalConfig
from hal9999.hive import broker, stats
from hal9999.hive.agents import AgentDir, set_state
from hal9999.hive.mcp import tools
from hal9999.hive.mcp.tools import Hive
from hal9999.hive.store import AgentRecord, insert_agent
from hal9999.hive.turns import HiveLoop
from hal9999.hivesettings import HiveSettings, hive_settings
from hal9999.store import Store


async def test_send_is_from_the_socket_agent_and_inbox_reads_it(world: World) -> None:
    async with connect(world.socks["alpha"]) as alpha:
        failed, sent = await call(alpha, "send", to="beta", body="ping?")
        assert not failed and sent["to"] == "beta"
    [message] = broker.inbox(world.store, "beta")
    assert (message.sender, message.body) == ("alpha", "ping?")
    async with connect(world.socks["beta"]) as beta:
        failed, got = await call(beta, "inbox")
        assert not failed
        assert got["messages"] == [
            {"id": message.id, "from": "alpha", "kind": "message", "body": "ping?"}
        ]
        assert (await call(beta, "inbox"))[1]["messages"] == []  # read now
        failed, again = await call(beta, "inbox", include_read=True)
        assert [m["id"] for m in again["messages"]] == [message.id]
    assert broker.inbox(world.store, "beta") == []


async def test_send_refusals_are_one_line(world: World) -> None:
    async with connect(world.socks["alpha"]) as alpha:
        failed, text = await call(alpha, "send", to="nobody", body="hi")
        assert failed and text.startswith("agent_not_found: no agent called 'nobody'")
        failed, text = await call(alpha, "send", to="alpha", body="hi")
        assert failed and "cannot send a message to itself" in text
        failed, text = await call(alpha, "send", to="beta", body="x", sender="beta")
        assert failed and text.startswith("bad arguments for send: sender: Extra inputs")
        for text in [t for _, t in [await call(alpha, "send", to="beta", body="  ")]]:
            assert "\n" not in text
    assert broker.inbox(world.store, "beta") == []


async def test_recv_returns_as_soon_as_a_message_arrives(world: World) -> None:
    async with connect(world.socks["beta"]) as beta:
        waiting = asyncio.create_task(call(beta, "recv", wait_s=tools.RECV_MAX_S))
        await asyncio.sleep(0.7)
        assert not waiting.done()
        await asyncio.to_thread(
            broker.send, world.store, sender="operator", recipient="beta", body="wake up"
        )
        # Woken by the message: waiting out RECV_MAX_S would take longer than this bound.
        failed, got = await asyncio.wait_for(waiting, tools.RECV_MAX_S - 15)
    assert not failed and [m["body"] for m in got["messages"]] == ["wake up"]


async def test_recv_says_call_again_when_nothing_came(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(world.socks["beta"]) as beta:
        # Ended by its wait_s of 1 s: waiting RECV_MAX_S instead would pass this bound.
        failed, got = await asyncio.wait_for(call(beta, "recv", wait_s=1), tools.RECV_MAX_S - 15)
    assert not failed and got["messages"] == [] and "call recv again" in got["note"]
    assert tools.RECV_MAX_S <= 45  # MCP clients time a call out at ~60 s


async def test_one_agents_recv_calls_poll_the_store_one_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each recv polled the store twice a second on the daemon's threads: an agent with its
    # calls in flight (16 a connection, 8 connections) made ~256 queries a second.
    polls: list[float] = []
    original = tools._take_unread

    async def counted(caller: tools.Caller) -> list[Any]:
        polls.append(time.monotonic())
        return await original(caller)

    monkeypatch.setattr(tools, "_take_unread", counted)
    async with connect(world.socks["beta"]) as beta:
        calls = [asyncio.create_task(call(beta, "recv", wait_s=1.2)) for _ in range(12)]
        await asyncio.sleep(0.8)
        await asyncio.to_thread(
            broker.send, world.store, sender="operator", recipient="beta", body="for one"
        )
        answers = await asyncio.gather(*calls)
    assert all(not failed for failed, _ in answers)
    got = [m["body"] for _, answer in answers for m in answer["messages"]]
    assert got == ["for one"], "one of them got it, once"
    # One poller at a time: each recv that got its turn polls a few times (before: 12 calls
    # polling three or four times each).
    assert len(polls) <= 12, len(polls)


async def test_two_calls_at_once_never_take_the_same_message(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each call read the agent's new messages, then took them: two calls of one agent at
    # once (an agent's calls run concurrently) both read it new and both returned it.
    await asyncio.to_thread(
        broker.send, world.store, sender="operator", recipient="beta", body="once"
    )
    both = threading.Barrier(2, timeout=10)  # both have read it before either takes it
    original = broker.inbox

    def gated(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        both.wait()
        return found

    monkeypatch.setattr(broker, "inbox", gated)
    async with connect(world.socks["beta"]) as beta:
        answers = await asyncio.gather(call(beta, "inbox"), call(beta, "inbox"))
    assert [m["body"] for _, answer in answers for m in answer["messages"]] == ["once"]


async def test_sub_tasks_belong_to_the_agent_that_started_them(
    world: World, tmp_path: Path
) -> None:
    main = _git_repo(tmp_path)["main"]
    async with connect(world.socks["alpha"]) as alpha:
        failed, started = await call(alpha, "run_task", prompt="write the docs", ref="main")
        assert not failed and started["status"] == "queued"
        [request] = world.tasks.created
        # The commit checked, never a name that may move before the clone.
        assert (request.prompt, request.ref, request.agent) == ("write the docs", main, "claude")
        failed, status = await call(alpha, "task_status", id=started["task"])
        assert not failed and status["branch"] == started["branch"]
        assert status["branch_made"] is False  # queued: nothing checked out yet
        failed, result = await call(alpha, "task_result", id=started["task"])
        assert not failed and "still running" in result["note"]
        world.tasks.records[started["task"]].status = "succeeded"
        failed, result = await call(alpha, "task_result", id=started["task"])
        assert not failed and result["status"] == "succeeded" and result["patch"] == ""
    async with connect(world.socks["beta"]) as beta:
        failed, text = await call(beta, "task_status", id=started["task"])
        assert failed and text.startswith("usage: no sub-task")
        failed, text = await call(beta, "task_result", id=started["task"])
        assert failed and text.startswith("usage: no sub-task")


async def test_a_sub_task_starts_only_where_the_agent_may_look(
    world: World, tmp_path: Path
) -> None:
    # Another agent's branch, another task's result, the stash: cloned whole for the
    # sub-task, their files came back to the agent in its patch.
    heads = _git_repo(tmp_path, "hal/agent/alpha", "hal/agent/beta", "hal/t9999999", "topic")
    async with connect(world.socks["alpha"]) as alpha:
        for ref in ("hal/agent/beta", "hal/t9999999", heads["hal/agent/beta"][:12]):
            failed, text = await call(alpha, "run_task", prompt="copy", ref=ref)
            assert failed and text.startswith(f"usage: ref {ref!r} is not yours"), text
            assert "\n" not in text
        failed, text = await call(alpha, "run_task", prompt="copy", ref="no-such-branch")
        assert failed and text.startswith("usage: ref 'no-such-branch' is not yours"), text
        for ref in ("hal/agent/alpha", "topic", "main"):
            failed, started = await call(alpha, "run_task", prompt="work", ref=ref)
            assert not failed, (ref, started)
        # Its own sub-task's branch, once it has one in the repository.
        first = started["branch"]
        _git_repo_branch(tmp_path, first)
        assert not (await call(alpha, "run_task", prompt="go on", ref=first))[0]
    wanted = [heads["hal/agent/alpha"], heads["topic"], heads["main"]]
    assert [r.ref for r in world.tasks.created[:3]] == wanted
    async with connect(world.socks["beta"]) as beta:  # alpha's sub-task is not beta's
        failed, text = await call(beta, "run_task", prompt="copy", ref=first)
        assert failed and "is not yours" in text


async def test_an_agents_ref_checks_run_one_at_a_time(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refused ref counts against no bound: calls in flight at once each ran host git.
    from hal9999.tasks import gitrepo

    _git_repo(tmp_path, "hal/agent/beta")
    running = most = 0
    real = gitrepo.git

    async def counted(*args: Any, **kwargs: Any) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.05)
            return await real(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(gitrepo, "git", counted)
    async with connect(world.socks["alpha"]) as alpha:
        calls = [call(alpha, "run_task", prompt="x", ref="hal/agent/beta") for _ in range(8)]
        answers = await asyncio.gather(*calls)
    assert all(failed and "is not yours" in text for failed, text in answers)
    assert most == 1


def _git_repo_branch(path: Path, branch: str) -> None:
    import subprocess

    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "checkout", "-q", "-b", branch, "main"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "sub"], check=True)
    subprocess.run([*git, "checkout", "-q", "main"], check=True)


async def test_the_manager_lists_agents_and_others_cannot(world: World) -> None:
    async with connect(world.socks["boss"]) as boss:
        failed, got = await call(boss, "list_agents")
    assert not failed
    assert {a["name"]: a["kind"] for a in got["agents"]} == {
        "alpha": "agent", "beta": "agent", "boss": "manager"
    }  # fmt: skip
    async with connect(world.socks["alpha"]) as alpha:
        failed, text = await call(alpha, "list_agents")
    assert failed and text.startswith("unknown tool 'list_agents'")


async def test_sync_follows_the_hive(world: World) -> None:
    assert world.hub.served == ["alpha", "beta", "boss"]
    from hal9999.hive.store import delete_agent

    async with connect(world.socks["beta"]) as beta:
        assert not (await call(beta, "run_task", prompt="old work"))[0]
    delete_agent(world.store, "beta")
    await world.hub.sync()
    assert world.hub.served == ["alpha", "boss"]
    assert not world.socks["beta"].parent.exists()
    # A new beta inherits nothing of the old one: neither its socket nor its sub-tasks.
    now = time.time()
    insert_agent(world.store, AgentRecord(name="beta", agent="claude", provider="bwrap",
                                          repo="/", created_at=now, updated_at=now))  # fmt: skip
    await world.hub.sync()
    async with connect(world.socks["beta"]) as beta:
        failed, text = await call(beta, "task_status", id="t0000000")
    assert failed and text.startswith("usage: no sub-task")


async def test_an_agent_respawned_between_syncs_gets_no_sub_task_of_the_old_one(
    world: World,
) -> None:
    from hal9999.hive.store import delete_agent

    async with connect(world.socks["beta"]) as beta:
        failed, got = await call(beta, "run_task", prompt="old work")
        assert not failed
        old = got["task"]
        world.tasks.records[old].status = "succeeded"
        # Removed and spawned again under its name before the hub's next sync (2 s) cleared
        # the old one's list of sub-tasks.
        delete_agent(world.store, "beta")
        later = time.time() + 1
        again = AgentRecord(name="beta", agent="claude", provider="bwrap", repo="/",
                            created_at=later, updated_at=later)  # fmt: skip
        insert_agent(world.store, again)
        for tool in ("task_status", "task_result"):
            failed, text = await call(beta, tool, id=old)
            assert failed and text.startswith("usage: no sub-task"), text


async def test_sub_tasks_are_bounded_and_name_a_known_agent(world: World) -> None:
    async with connect(world.socks["alpha"]) as alpha:
        failed, text = await call(alpha, "run_task", prompt="x", agent="sh -c 'echo pwned'")
        assert failed and text.startswith("usage: unknown agent \"sh -c 'echo pwned'\"")
        for _ in range(tools.MAX_ACTIVE_SUBTASKS):
            assert not (await call(alpha, "run_task", prompt="work"))[0]
        failed, text = await call(alpha, "run_task", prompt="one more")
        assert failed and "sub-tasks queued or running" in text
        for record in world.tasks.records.values():
            record.status = "succeeded"
        assert not (await call(alpha, "run_task", prompt="now it fits"))[0]


async def test_sub_tasks_count_against_the_hive_budget_and_stop_once_it_is_spent(
    world: World,
) -> None:
    from hal9999.hive.turns import HiveLoop
    from hal9999.hivesettings import HiveSettings
    from hal9999.store.gateway import GatewayRequest

    loop = HiveLoop.__new__(HiveLoop)  # its budget check only: no daemon
    loop.store, loop.home = world.store, world.hub.hive.home
    loop.settings = HiveSettings(daily_budget_usd=1.0)
    world.hub.hive.over_budget = loop.over_budget  # as `hal serve` wires it
    async with connect(world.socks["alpha"]) as alpha:
        failed, started = await call(alpha, "run_task", prompt="spend")
        assert not failed, started
        # The sub-task's calls through the gateway: the hive's own turns spent nothing.
        world.store.add_gateway_request(GatewayRequest(
            task_id=started["task"], ts=time.time(), method="POST", path="/v1/messages",
            status=200, latency_ms=1.0, input_tokens=900, output_tokens=100, cost_usd=1.5,
        ))  # fmt: skip
        # Before, sub-tasks counted nowhere: an agent spent past the hive's budget with them.
        assert "spent $1.50 in 24 h (budget $1)" in (loop.over_budget() or "")
        failed, text = await call(alpha, "run_task", prompt="spend more")
        assert failed and text.startswith("hive_limited: the hive spent $1.50"), text
    assert len(world.tasks.created) == 1


async def test_sub_tasks_started_at_once_stay_bounded_and_all_owned(world: World) -> None:
    # One agent's calls run concurrently (and it may hold several connections): the
    # bound and the list of its sub-tasks must hold for calls that overlap.
    async with connect(world.socks["alpha"]) as alpha, connect(world.socks["alpha"]) as again:
        calls = [call(c, "run_task", prompt=f"work {i}") for i in range(6) for c in (alpha, again)]
        results = await asyncio.gather(*calls)
        started = [got["task"] for failed, got in results if not failed]
        assert len(world.tasks.created) == len(started) == tools.MAX_ACTIVE_SUBTASKS
        for task_id in started:
            failed, got = await call(alpha, "task_status", id=task_id)
            assert not failed, got


async def test_inbox_leaves_out_what_the_turns_prompt_delivered(world: World) -> None:
    early = broker.send(world.store, sender="operator", recipient="beta", body="in the prompt")
    broker.mark(world.store, [early.id], "delivered")  # the turn loop put it in the prompt
    broker.send(world.store, sender="alpha", recipient="beta", body="new")
    async with connect(world.socks["beta"]) as beta:
        failed, got = await call(beta, "inbox")
    assert not failed and [m["body"] for m in got["messages"]] == ["new"]


@pytest.mark.parametrize("result", ["crashed", "ok"])
async def test_a_message_the_agent_took_through_its_tools_reaches_the_next_turn_when_its_turn_crashes(  # noqa: E501
    world: World, result: str
) -> None:
    home = world.hub.hive.home
    service = SimpleNamespace(store=world.store, config=SimpleNamespace(home=home))
    loop = HiveLoop(SimpleNamespace(service=service), HiveSettings())  # type: ignore[arg-type]
    AgentDir.of(home, "beta").root.mkdir(parents=True)
    first = broker.send(world.store, sender="operator", recipient="beta", body="the prompt")
    ids = [str(e["id"]) for e in loop.deliver("beta")]
    set_state(world.store, "beta", "running", expect="sleeping")
    turn = stats.start_turn(world.store, "beta", None, "message from operator", ids)
    later = broker.send(world.store, sender="alpha", recipient="beta", body="during the turn")
    async with connect(world.socks["beta"]) as beta:
        assert [m["id"] for m in (await call(beta, "inbox"))[1]["messages"]] == [later.id]
        seen = (await call(beta, "inbox", include_read=True))[1]["messages"]
        assert {m["id"] for m in seen} == {first.id, later.id}
    # The sandbox is killed before the agent acted on them (crashed), or the turn ends well.
    await asyncio.to_thread(loop._close, "beta", turn, None, result, time.time(), 0, ids, "kill")
    if result == "crashed":  # both wake the next turn and are in its prompt, each once
        assert loop._has_mail("beta")
        assert [e["id"] for e in loop.deliver("beta")] == [first.id, later.id]
    else:  # taken and read: never in a prompt again
        assert broker.inbox(world.store, "beta") == []
        assert loop.deliver("beta") == []


def test_the_daily_sub_task_bound_is_a_hive_setting_of_100_by_default() -> None:
    assert HiveSettings().subtasks_per_day == 100
    assert Hive(store=cast(Store, None), home=Path("/")).subtasks_per_day == 100
    config = HalConfig(home=Path("/nonexistent"), hive={"subtasks_per_day": 3})
    assert hive_settings(config).subtasks_per_day == 3


def test_the_daemon_hands_its_subtasks_per_day_to_the_tools(tmp_path: Path) -> None:
    from hal9999.server.daemon import Daemon
    from hal9999.server.mcp import hub_for

    daemon = Daemon(HalConfig(home=tmp_path / "home", hive={"subtasks_per_day": 2}), {})
    try:
        assert hub_for(daemon).hive.subtasks_per_day == 2
    finally:
        daemon.store.close()


async def test_an_agent_starts_a_bounded_number_of_sub_tasks_a_day(world: World) -> None:
    # Each sub-task keeps a session (a clone of the repository) on the host; one that ends
    # at once freed its place among the four active ones, so an agent looping on run_task
    # made sessions without end. The bound is [hive] subtasks_per_day (100), here 3.
    world.hub.hive.subtasks_per_day = 3
    async with connect(world.socks["alpha"]) as alpha:
        for _ in range(3):
            failed, started = await call(alpha, "run_task", prompt="exit at once")
            assert not failed, started
            done = world.tasks.records[started["task"]]
            world.tasks.records[done.id] = done.model_copy(update={"status": "failed"})
        failed, text = await call(alpha, "run_task", prompt="once more")
        assert failed and text.startswith("hive_limited: you started 3 sub-tasks"), text
        assert "(at most 3, [hive] subtasks_per_day)" in text
    assert len(world.tasks.created) == 3
