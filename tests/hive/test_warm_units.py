"""The warm-agent sandbox source over a real warm pool and a counting fake provider: a warm
agent's second run reuses its sandbox with no create; idle, stopped, crashed, cold and
shutting-down cases release it; the spawn policy and ``--warm-idle`` parse strictly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hal9999.errors import ConfigError, UsageError
from hal9999.hive.store import AgentPolicy, AgentRecord, insert_agent, update_agent
from hal9999.hive.warm import WarmHolds, warm_policy
from hal9999.hivesettings import HiveSettings
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.providers.fake.provider import FakeProvider, FakeSandbox
from hal9999.spec import Bind, SandboxSpec
from hal9999.store import Store, TaskRecord
from hal9999.tasks.sandboxes import PoolSource


class CountingProvider(FakeProvider):
    """The fake provider, counting creates and destroys."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.created = 0
        self.destroyed = 0

    async def create(self, spec: SandboxSpec) -> FakeSandbox:
        self.created += 1
        return await super().create(spec)

    async def destroy(self, sandbox_id: str) -> None:
        self.destroyed += 1
        await super().destroy(sandbox_id)


def spec_of(session: Path) -> SandboxSpec:
    for name in ("workspace", "home"):
        (session / name).mkdir(parents=True, exist_ok=True)
    return SandboxSpec(provider="fake", workspace=session / "workspace",
                       binds=(Bind(source=session / "home", target="/home/hal"),),
                       labels={"hal.task": session.name})  # fmt: skip


class Hive:
    """A store with one agent and its task, a pool, and the warm source over both."""

    def __init__(self, tmp_path: Path, *, warm: bool = True, idle_s: float = 600) -> None:
        self.store = Store.open(tmp_path / "home")
        self.provider = CountingProvider(tmp_path / "state")
        settings = ProviderSettings.model_validate({"policy": "destroy"})
        self.pool = WarmPool(providers=lambda _: self.provider, settings=lambda _: settings,
                             slots=SlotDir(tmp_path / "slots"), store=self.store)  # fmt: skip
        self.source = WarmHolds(PoolSource(self.pool), self.store)
        self.spec = spec_of(tmp_path / "t1")
        now = time.time()
        self.store.insert_task(TaskRecord(
            id="t1", prompt="p", agent="custom", provider="fake", process_manager="tmux",
            repo="/r", repo_kind="local", branch="hal/agent/alice", status="succeeded",
            created_at=now, session_dir=str(tmp_path / "t1")))  # fmt: skip
        insert_agent(self.store, AgentRecord(
            name="alice", agent="custom", provider="fake", state="running", task_id="t1",
            policy=AgentPolicy(warm=warm, warm_idle_s=idle_s), created_at=now,
            updated_at=now))  # fmt: skip

    async def turn(self) -> str:
        """One run of the agent's task: acquire, (run), release; the sandbox id."""
        lease = await self.source.acquire(self.provider, self.spec, "t1")
        assert lease is not None
        await self.source.release(lease.sandbox, reuse=True)
        return lease.sandbox.id

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def hive(tmp_path: Path) -> Iterator[Hive]:
    made = Hive(tmp_path)
    yield made
    made.close()


async def test_a_warm_agents_second_turn_reuses_its_sandbox_without_a_create(hive: Hive) -> None:
    first = await hive.turn()
    assert hive.provider.created == 1 and hive.provider.destroyed == 0
    assert "t1" in hive.source.held
    second = await hive.turn()
    assert second == first
    assert hive.provider.created == 1, "the second turn created no sandbox"
    assert hive.source.reused == 1
    # Held, it stays leased to the agent's task in the pool and the store.
    [row] = hive.store.list_sandboxes()
    assert (row.id, row.state, row.task_id) == (first, "leased", "t1")


async def test_a_cold_agent_gets_a_new_sandbox_per_turn(tmp_path: Path) -> None:
    hive = Hive(tmp_path, warm=False)
    try:
        assert await hive.turn() != await hive.turn()
        assert hive.provider.created == 2 and hive.provider.destroyed == 2
        assert not hive.source.held
    finally:
        hive.close()


async def test_idle_past_the_limit_releases_and_the_next_turn_creates(tmp_path: Path) -> None:
    hive = Hive(tmp_path, idle_s=60)
    try:
        first = await hive.turn()
        assert await hive.source.reap(now=time.time() + 30) == []  # not idle long enough
        assert await hive.source.reap(now=time.time() + 61) == ["alice"]
        assert hive.provider.destroyed == 1 and hive.store.list_sandboxes() == []
        assert await hive.turn() != first and hive.provider.created == 2
    finally:
        hive.close()


@pytest.mark.parametrize("state", ["stopped", "crashed"])
async def test_a_stopped_or_crashed_agent_is_released_by_the_sweep(hive: Hive, state: str) -> None:
    await hive.turn()
    update_agent(hive.store, "alice", state=state)
    assert await hive.source.reap() == ["alice"]
    assert hive.provider.destroyed == 1 and not hive.source.held


async def test_a_run_that_is_stopped_or_crashes_is_not_held(hive: Hive) -> None:
    lease = await hive.source.acquire(hive.provider, hive.spec, "t1")
    assert lease is not None
    hive.store.update_task("t1", status="failed", exit_code=137)  # killed by a signal
    await hive.source.release(lease.sandbox, reuse=True)
    assert not hive.source.held and hive.provider.destroyed == 1
    lease = await hive.source.acquire(hive.provider, hive.spec, "t1")
    assert lease is not None
    await hive.source.release(lease.sandbox, reuse=False)  # stopped from outside
    assert not hive.source.held and hive.provider.destroyed == 2


async def test_a_held_sandbox_that_vanished_is_replaced(hive: Hive) -> None:
    first = await hive.turn()
    await hive.provider.destroy(first)  # gone behind hal's back
    second = await hive.turn()
    assert second != first and hive.provider.created == 2


async def test_shutdown_releases_every_held_sandbox(hive: Hive) -> None:
    await hive.turn()
    assert await hive.source.release_all() == 1
    assert hive.provider.destroyed == 1 and hive.store.list_sandboxes() == []


async def test_a_runs_end_looks_for_its_agent_on_the_loop_with_no_thread_hop(
    hive: Hive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Every run's end through the daemon asks whether a warm agent keeps its sandbox; the
    # answer is a read (WAL: never waits for a writer), so it is read on the loop: a thread
    # hop was one more wake-up of the loop before the run's follower is answered.
    import threading

    threads: list[int] = []
    query = hive.store._query

    def counted(sql: str, params: Any = ()) -> Any:
        if "hive_agents" in sql:
            threads.append(threading.get_ident())
        return query(sql, params)

    monkeypatch.setattr(hive.store, "_query", counted)
    other = spec_of(tmp_path / "t2")  # a task that is no agent's: the sandbox goes back
    lease = await hive.source.acquire(hive.provider, other, "t2")
    assert lease is not None
    await hive.source.release(lease.sandbox, reuse=True)
    assert not hive.source.held and hive.provider.destroyed == 1
    await hive.turn()  # the agent's own task: held, as before
    assert list(hive.source.held) == ["t1"]
    assert threads == [threading.get_ident()] * 2, "looked up in the loop's thread"


def test_the_spawn_policy_takes_the_hive_defaults_and_refuses_bad_values() -> None:
    defaults = HiveSettings(keep_warm=True, warm_idle_s=90)
    assert warm_policy(None, None, defaults) == AgentPolicy(warm=True, warm_idle_s=90)
    assert warm_policy(False, 30, HiveSettings()).warm is False
    for keep, idle in (("yes", None), (None, "10m"), (None, 0), (None, -1), (None, True),
                       (None, 10 * 86400)):  # fmt: skip
        with pytest.raises(ConfigError):
            warm_policy(keep, idle, HiveSettings())


def test_warm_idle_durations() -> None:
    from hal9999.cli.hive import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "10m", "2h", "1d", "1.5m")] == [
        90, 90, 600, 7200, 86400, 90]  # fmt: skip
    for bad in ("", "m", "ten", "-5m", "0", "nan", "inf", "5w"):
        with pytest.raises(UsageError):
            parse_duration(bad)
