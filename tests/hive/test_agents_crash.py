"""Approving a spawn or destroy, removing an agent, and the manager's approved restart, in a
process killed (SIGKILL) after each of its store commits in turn, then done again: a
proposal is approved exactly when its agent was made (or removed), an agent's record never
goes while its mailbox stays, and an approved restart is never spent without being done."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

import pytest
from tests.hive.conftest import make_agent
from tests.hive.crash_helpers import killed

from hal9999.hive import approvals, broker
from hal9999.hive.agents import AgentDir
from hal9999.hive.store import agent_exists, get_agent, update_agent
from hal9999.store import Store, TaskRecord

pytestmark = pytest.mark.timeout(240)

# `hive_api` carries out spawn and destroy proposals as `hal serve` does; the actions below
# use it, `daemon`, `store`, `home` and `thread`.
DAEMON = textwrap.dedent(
    """
    from types import SimpleNamespace
    from hal9999.config import HalConfig
    from hal9999.hive import agents, approvals
    from hal9999.hivesettings import HiveSettings
    from hal9999.hive.turns import HiveLoop
    from hal9999.hive.api import HiveAPI
    from hal9999.pool.settings import scheduler_settings
    from hal9999.tasks.scheduler import Scheduler
    from hal9999.tasks.served import ServedTaskAPI
    from hal9999.tasks.service import TaskService

    config = HalConfig(home=home, process_manager="direct", default_provider="local")
    service = TaskService(config, store, {})
    scheduler = Scheduler(service, scheduler_settings(config, {}), lambda name: 1)
    tasks = ServedTaskAPI(service, scheduler, None)
    daemon = SimpleNamespace(store=store, config=config, hive=HiveLoop(tasks, HiveSettings()))
    hive_api = HiveAPI(store, config, HiveSettings(), daemon.hive, None)
    """
)
APPROVE = "asyncio.run(hive_api.approve(thread, reason=None))"
# The manager boss calls restart(bob) with its approved proposal; prints what it was told.
RESTART = textwrap.dedent(
    """
    from hal9999.errors import HalError
    from hal9999.hive.mcp import thread_tools
    from hal9999.hive.mcp.tools import Caller, Hive

    boss = Caller(Hive(store=store, home=home, lifecycle=daemon.hive), "boss", manager=True)
    args = thread_tools.LifecycleArgs(name="bob", approval=thread)
    try:
        print(asyncio.run(thread_tools.restart(boss, args)))
    except HalError as exc:
        print(exc)
    """
)


def run_killed(home: Path, action: str, thread: str, after: int) -> int:
    """Run ``action`` beside the daemon, killed after its ``after``-th commit; its exit
    status."""
    return killed(home, DAEMON + action, thread, after).returncode


# What alice proposes: spawn carol, destroy bob, or destroy herself.
PAYLOADS = {
    "spawn": {"name": "carol", "agent": "sh run.sh {{prompt_file}}", "provider": "local"},
    "destroy": {"name": "bob"},
    "destroy-self": {"name": "alice"},
}


def propose(home: Path, case: str) -> str:
    """A fresh home with agents alice and bob, and alice's proposal of ``case``."""
    with Store.open(home) as store:
        make_agent(store, "alice")
        make_agent(store, "bob")
        AgentDir.of(home, "bob").root.mkdir(parents=True)
        kind = case.removesuffix("-self")
        return approvals.propose(store, kind=kind, proposer="alice", title=f"{kind} it",
                                 payload=PAYLOADS[case]).id  # fmt: skip


def outcome(home: Path, case: str, thread: str) -> tuple[str, bool, int]:
    """The proposal's state, whether its action happened, how often alice was told."""
    name = PAYLOADS[case]["name"]
    with Store.open(home) as store:
        state = approvals.get(store, thread).state
        done = agent_exists(store, name) == (case == "spawn")
        told = store._query(
            "SELECT COUNT(*) FROM hive_messages WHERE recipient = 'alice' AND ref = ?", (thread,)
        )[0][0]
    return state, done, told


@pytest.mark.parametrize("case", sorted(PAYLOADS))
def test_an_approval_is_recorded_exactly_when_its_agent_was_made_or_removed_whatever_commit_a_kill_follows(  # noqa: E501
    tmp_path: Path, case: str
) -> None:
    for after in range(1, 15):
        home = tmp_path / f"home-{after}"
        thread = propose(home, case)
        finished = run_killed(home, APPROVE, thread, after) == 0
        state, done, told = outcome(home, case, thread)
        # Approved with its message, or still pending with nothing done and nobody told; an
        # agent that destroyed itself is told in its mailbox, which goes with it.
        approved = ("approved", True, 0 if case == "destroy-self" else 1)
        assert (state, done, told) in (approved, ("pending", False, 0)), after
        if state == "pending":  # approving again finishes it
            assert run_killed(home, APPROVE, thread, 0) == 0
            assert outcome(home, case, thread) == approved, after
        if finished:
            return
    pytest.fail(f"approving {case} did not finish within 14 commits")


def test_an_agent_removed_by_a_killed_process_leaves_no_mailbox_for_a_new_one_of_its_name(
    tmp_path: Path,
) -> None:
    forget = "agents.forget(store, home, 'bob')"
    for after in range(1, 10):
        home = tmp_path / f"home-{after}"
        with Store.open(home) as store:
            make_agent(store, "bob")
            broker.send(store, sender="operator", recipient="bob", body="not read by the old bob")
        bob = AgentDir.of(home, "bob")
        bob.root.mkdir(parents=True)
        bob.mailbox.write_text(json.dumps({"id": "m-old", "body": "for the old bob"}) + "\n")
        bob.set_cursor(1)
        finished = run_killed(home, forget, "", after) == 0
        with Store.open(home) as store:
            kept = agent_exists(store, "bob")
            waiting = broker.inbox(store, "bob")
        if not kept:  # a new bob may be made now: nothing of the old one may be left
            assert not bob.root.exists(), after
            assert waiting == [], after  # its mail would reach the new bob's first turn
        else:  # `hal agent rm bob` again finishes it
            assert run_killed(home, forget, "", 0) == 0
            with Store.open(home) as store:
                assert not agent_exists(store, "bob")
                assert broker.inbox(store, "bob") == []
            assert not bob.root.exists()
        if finished:
            return
    pytest.fail("forget did not finish within 9 commits")


def test_an_agent_whose_removal_a_kill_cut_short_is_removed_by_the_next_rm_whatever_commit(
    tmp_path: Path,
) -> None:
    remove = "asyncio.run(daemon.hive.remove_agent('bob'))"
    for after in range(1, 15):
        home = tmp_path / f"home-{after}"
        session = home / "sessions" / "t-bob"
        with Store.open(home) as store:  # bob with the task its turns ran as
            make_agent(store, "bob")
            store.insert_task(TaskRecord(
                id="t-bob", prompt="p", agent="custom", provider="local",
                process_manager="direct", repo=str(tmp_path / "nowhere"), repo_kind="local",
                branch="hal/agent/bob", status="succeeded", created_at=time.time(),
                session_dir=str(session),
            ))  # fmt: skip
            update_agent(store, "bob", task_id="t-bob")
        session.mkdir(parents=True)
        AgentDir.of(home, "bob").root.mkdir(parents=True)
        finished = run_killed(home, remove, "", after) == 0
        with Store.open(home) as store:
            kept = agent_exists(store, "bob")
        if kept:  # `hal agent rm bob` again finishes it, whatever of it went already
            assert run_killed(home, remove, "", 0) == 0, after
        with Store.open(home) as store:
            assert not agent_exists(store, "bob"), after
            assert store._query("SELECT id FROM tasks") == [], after
        assert not session.exists() and not AgentDir.of(home, "bob").root.exists(), after
        if finished:
            return
    pytest.fail("removing bob did not finish within 14 commits")


# Crash watch records a crash of bob's turn; `thread` is the crash loop's length.
ON_CRASH = textwrap.dedent(
    """
    from hal9999.hive import watch
    from hal9999.hivesettings import HiveSettings
    from hal9999.hive.store import get_agent

    settings = HiveSettings(crash_loop=int(thread))
    watch.on_crash(store, get_agent(store, "bob"), "the agent was killed by signal 9", settings)
    """
)


@pytest.mark.parametrize("loop", ["1", "3"])  # 1: given up on at once; 3: restarted later
def test_a_crash_is_never_recorded_without_its_notices_whatever_commit_a_kill_follows(
    tmp_path: Path, loop: str
) -> None:
    for after in range(1, 10):
        home = tmp_path / f"home-{after}"
        with Store.open(home) as store:
            make_agent(store, "bob")
        finished = killed(home, ON_CRASH, loop, after).returncode == 0
        with Store.open(home) as store:
            bob = get_agent(store, "bob")
            told = [row["recipient"] for row in store._query(
                "SELECT recipient FROM hive_messages WHERE sender = 'hal' AND kind = 'notice'"
                " AND body LIKE 'agent bob crashed%'")]  # fmt: skip
            events = store._query("SELECT 1 FROM hive_events WHERE type = 'agent_crashed'")
        if bob.crashes:  # recorded: crashed for good (the operator told) or restarting
            assert told == ["operator"] and len(events) == 1, after
            assert bob.state == ("crashed" if loop == "1" else "sleeping"), after
        else:  # nothing of it: the agent is as it was
            assert told == [] and events == [] and bob.state == "sleeping", after
        if finished:
            assert bob.crashes == 1
            return
    pytest.fail("on_crash did not finish within 9 commits")


def restarted(home: Path, thread: str) -> bool:
    """Whether bob was stopped for the restart approved by ``thread`` and is awake again."""
    with Store.open(home) as store:
        states = [json.loads(row[0]) for row in store._query(
            "SELECT body FROM hive_events WHERE type = 'agent_state' AND agent = 'bob'"
            " ORDER BY gseq")]  # fmt: skip
        awake = get_agent(store, "bob").state == "sleeping"
    stops = [i for i, e in enumerate(states) if e["detail"] == f"restart approved ({thread})"]
    return awake and bool(stops) and states[stops[0]]["state"] == "stopped"


def test_an_approved_restart_is_never_spent_without_being_done_whatever_commit_a_kill_follows(
    tmp_path: Path,
) -> None:
    for after in range(1, 15):
        home = tmp_path / f"home-{after}"
        with Store.open(home) as store:
            make_agent(store, "boss")
            make_agent(store, "bob")
            AgentDir.of(home, "bob").root.mkdir(parents=True)  # a whole agent: it may start
            thread = approvals.propose(store, kind="tool", proposer="boss",
                                       title="restart agent bob",
                                       payload={"tool": "restart", "agent": "bob"}).id  # fmt: skip
            asyncio.run(approvals.approve(store, thread))
        finished = run_killed(home, RESTART, thread, after) == 0
        again = killed(home, DAEMON + RESTART, thread, 0).stdout
        # Done by the killed call (and spent) or by this one: bob restarted either way.
        assert restarted(home, thread), (after, again)
        if "carried out already" not in again:
            assert json.loads(again) == {"done": "restart", "agent": "bob"}, after
            assert not finished, after
            again = killed(home, DAEMON + RESTART, thread, 0).stdout
        assert again.startswith(f"proposal {thread} was carried out already"), (after, again)
        if finished:
            return
    pytest.fail("restart did not finish within 14 commits")
