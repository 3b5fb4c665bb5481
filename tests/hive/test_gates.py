"""The one use of an approval that gates the manager's stop or restart, kept in the store:
uses made at once are each kept, a use in progress cannot be taken twice, and a failed
action does not spend the approval. (A kill at each moment: tests/hive/test_agents_crash.py.)"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.hive.conftest import make_agent

from hal9999.errors import ThreadNotFound, UsageError
from hal9999.hive import approvals
from hal9999.hive.mcp import thread_tools
from hal9999.hive.mcp.tools import Caller, Hive
from hal9999.store import Store

AGENTS = [f"a{i}" for i in range(12)]


@dataclass
class SlowLoop:
    """The turn loop's stop/start, recorded; a stop waits for ``go`` and may fail."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    fail: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def stop_agent(self, name: str, reason: str = "") -> None:
        await self.go.wait()
        if self.fail:
            raise RuntimeError("the scheduler is gone")
        self.calls.append(("stop", name))

    async def start_agent(self, name: str) -> None:
        self.calls.append(("start", name))


def approved_stop(store: Store, name: str) -> str:
    """The manager's stop of ``name``, approved."""
    made = approvals.propose(store, kind="tool", proposer="boss", title=f"stop agent {name}",
                             payload={"tool": "stop", "agent": name})  # fmt: skip
    asyncio.run(approvals.approve(store, made.id))
    return made.id


@pytest.fixture
def gated(tmp_path: Path) -> tuple[Store, dict[str, str]]:
    """A store with the manager boss, agents a0..a11 and an approved stop of each."""
    store = Store.open(tmp_path / "home")
    for name in ["boss", *AGENTS]:
        make_agent(store, name)
    return store, {name: approved_stop(store, name) for name in AGENTS}


def stop(caller: Caller, name: str, approval: str) -> asyncio.Future[str]:
    args = thread_tools.LifecycleArgs(name=name, approval=approval)
    return asyncio.ensure_future(thread_tools.stop(caller, args))


async def test_stops_approved_and_used_at_once_are_each_spent_once(
    gated: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    store, ids = gated
    loop = SlowLoop()
    boss = Caller(Hive(store=store, home=tmp_path / "home", lifecycle=loop), "boss", True)
    first = [stop(boss, name, ids[name]) for name in AGENTS]
    await asyncio.sleep(0.3)  # every use claimed, every stop waiting
    with pytest.raises(UsageError, match="is being carried out"):
        await stop(boss, "a0", ids["a0"])
    loop.go.set()
    assert [json.loads(x) for x in await asyncio.gather(*first)] == [
        {"done": "stop", "agent": name} for name in AGENTS
    ]
    for name in AGENTS:  # none of the uses was lost: each is spent
        with pytest.raises(UsageError, match="was carried out already"):
            await stop(boss, name, ids[name])
    assert sorted(loop.calls) == sorted(("stop", name) for name in AGENTS)
    store.close()


async def test_a_stop_that_fails_leaves_its_approval_for_another_try(
    gated: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    store, ids = gated
    loop = SlowLoop(fail=True)
    loop.go.set()
    boss = Caller(Hive(store=store, home=tmp_path / "home", lifecycle=loop), "boss", True)
    with pytest.raises(RuntimeError, match="the scheduler is gone"):
        await stop(boss, "a1", ids["a1"])
    loop.fail = False
    assert json.loads(await stop(boss, "a1", ids["a1"])) == {"done": "stop", "agent": "a1"}
    assert loop.calls == [("stop", "a1")]
    store.close()


async def test_a_guessed_prefix_of_anothers_proposal_gets_the_answer_of_no_proposal(
    gated: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    # The stop looked the id up among every proposal: a prefix of another agent's was told
    # "is not your stop" (it exists) where an unknown one was told it matches none.
    store, _ = gated
    theirs = approvals.propose(store, kind="spawn", proposer="a0", title="spawn x",
                               payload={"name": "x", "agent": "custom", "role": "r"})  # fmt: skip
    boss = Caller(Hive(store=store, home=tmp_path / "home", lifecycle=SlowLoop()), "boss", True)
    unknown = "a-" + "".join("0" if c != "0" else "1" for c in theirs.id[2:])
    said: list[str] = []
    for key in (theirs.id, theirs.id[:9], unknown, unknown[:9]):
        with pytest.raises(ThreadNotFound) as caught:
            await stop(boss, "a1", key)
        said.append(caught.value.one_line().replace(key, "KEY"))
        assert theirs.id not in caught.value.one_line() or key == theirs.id
    assert len(set(said)) == 1, said
    assert "matches no approval proposed by boss" in said[0]
    store.close()
