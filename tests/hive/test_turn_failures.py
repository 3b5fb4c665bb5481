"""A turn that fails inside hal (not in the agent's sandbox) is a crash: crash watch's
backoff and crash-loop stop apply to it, so a failure that comes back every time cannot spin
the daemon. The case that found it: ``hal agent rm`` killed after it removed the agent's
state directory, then ``hal agent start`` instead of ``rm``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from tests.hive.conftest import make_agent

from hal9999.config import HalConfig
from hal9999.errors import HiveError
from hal9999.hive import broker
from hal9999.hive.agents import AgentDir
from hal9999.hive.store import get_agent, update_agent
from hal9999.hive.turns import HiveLoop
from hal9999.hivesettings import HiveSettings
from hal9999.store import Store
from hal9999.tasks.served import ServedTaskAPI
from hal9999.tasks.service import TaskService

pytestmark = pytest.mark.timeout(60)


def hive_of(store: Store, home: Path, settings: HiveSettings) -> tuple[HiveLoop, list[str]]:
    """A turn loop (no scheduler: these turns fail before a run) and the list each of its
    turn attempts (deliveries) appends the agent's name to."""
    config = HalConfig(home=home, process_manager="direct", default_provider="local")
    hive = HiveLoop(ServedTaskAPI(TaskService(config, store, {}), None, None), settings)  # type: ignore[arg-type]
    attempts: list[str] = []
    real = hive.deliver

    def deliver(name: str) -> list[dict[str, object]]:
        attempts.append(name)
        return real(name)

    hive.deliver = deliver  # type: ignore[method-assign]
    return hive, attempts


def half_removed_bob(home: Path) -> Store:
    """Bob, whose removal was killed after his state directory went, with mail waiting."""
    store = Store.open(home)
    make_agent(store, "bob")  # no state directory: as `forget` left it
    broker.send(store, sender="operator", recipient="bob", body="hello")
    return store


async def until(check: object, timeout: float = 10.0) -> None:
    """Poll ``check()`` until it is true."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_turn_failing_in_hal_is_retried_after_crash_watchs_backoff_not_at_once(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with half_removed_bob(home) as store:
        hive, attempts = hive_of(store, home, HiveSettings(crash_backoff_s=2.0))

        async def main() -> None:
            hive._loop = asyncio.get_running_loop()
            hive.wake("bob")
            await until(lambda: attempts)
            await asyncio.sleep(0.5)  # well inside the 2 s backoff: no other try
            assert attempts == ["bob"], len(attempts)  # before: hundreds in that half second
            await until(lambda: get_agent(store, "bob").crashes == 1 and "bob" not in hive.turns)

        asyncio.run(main())
        bob = get_agent(store, "bob")
        assert bob.state == "sleeping" and "its turn failed in hal" in (bob.detail or "")
        assert broker.inbox(store, "bob")  # its mail is not lost


def test_a_turn_that_keeps_failing_in_hal_stops_as_a_crash_loop_and_the_operator_is_told(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with half_removed_bob(home) as store:
        settings = HiveSettings(crash_backoff_s=0.01, crash_loop=3)
        hive, attempts = hive_of(store, home, settings)

        async def main() -> None:
            hive._loop = asyncio.get_running_loop()
            hive.wake("bob")
            await until(lambda: get_agent(store, "bob").state == "crashed")
            await until(lambda: "bob" not in hive.turns)
            hive.wake("bob")
            await asyncio.sleep(0.2)

        asyncio.run(main())
        assert attempts == ["bob"] * 3
        told = [m.body for m in broker.inbox(store, "operator")]
        assert any("agent bob crashed" in body and "NOT restarted" in body for body in told)


def test_starting_an_agent_whose_state_directory_is_gone_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with half_removed_bob(home) as store:
        update_agent(store, "bob", state="stopped", detail="being removed")
        hive, attempts = hive_of(store, home, HiveSettings())
        with pytest.raises(HiveError) as refused:
            asyncio.run(hive.start_agent("bob"))
        assert "state directory is gone" in refused.value.one_line()
        assert "`hal agent rm bob` finishes removing it" in refused.value.one_line()
        assert get_agent(store, "bob").state == "stopped" and attempts == []
        AgentDir.of(home, "bob").root.mkdir(parents=True)  # a whole agent starts
        started = asyncio.run(hive.start_agent("bob"))
        # The loop guard counts from here (test_broker.py: not stopped again at once).
        assert started.state == "sleeping" and started.loop_since is not None


def test_a_restarted_daemon_waits_out_the_backoff_a_crash_started_before_it(
    tmp_path: Path,
) -> None:
    # The backoff was kept in memory only: each `hal serve` restart gave a crash-looping
    # agent one turn at once, at its first sweep.
    home = tmp_path / "home"
    with half_removed_bob(home) as store:
        settings = HiveSettings(crash_backoff_s=1.0, crash_loop=5)
        first, attempts = hive_of(store, home, settings)

        async def crash_once() -> None:
            first._loop = asyncio.get_running_loop()
            first.wake("bob")
            await until(lambda: get_agent(store, "bob").crashes == 1 and "bob" not in first.turns)

        asyncio.run(crash_once())
        assert attempts == ["bob"]
        crashed_at = get_agent(store, "bob").last_crash_at
        assert crashed_at is not None
        again, retried = hive_of(store, home, settings)  # the next daemon, bob's mail waiting
        swept = asyncio.Event()
        real_sweep = again.sweep

        async def sweep() -> None:
            await real_sweep()
            swept.set()

        again.sweep = sweep  # type: ignore[method-assign]

        async def restart() -> None:
            serving = asyncio.create_task(again.run_forever())
            await swept.wait()
            assert retried == [] and "bob" not in again.turns  # before: a turn at once
            again.wake("bob")
            await asyncio.sleep(0)
            assert "bob" not in again.turns
            await until(lambda: retried == ["bob"])  # once the backoff is over
            assert time.time() >= crashed_at + 1.0
            await until(lambda: "bob" not in again.turns)
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving

        asyncio.run(restart())
        assert get_agent(store, "bob").crashes == 2


def test_a_turn_cancelled_by_the_daemons_stop_starts_no_other(tmp_path: Path) -> None:
    # `hal serve` stopping (SIGTERM) cancels the turns in progress; one cancelled before its
    # agent moved to `running` (bob sleeps, with mail) started another turn from its end,
    # after the stop had gathered them: a turn begun on a daemon going away.
    home = tmp_path / "home"
    with Store.open(home) as store:
        make_agent(store, "bob")
        AgentDir.of(home, "bob").root.mkdir(parents=True)
        broker.send(store, sender="operator", recipient="bob", body="hello")
        hive, attempts = hive_of(store, home, HiveSettings())
        hive.over_budget = lambda: time.sleep(0.3)  # type: ignore[assignment,method-assign,func-returns-value]

        async def main() -> None:
            hive._loop = asyncio.get_running_loop()
            hive.wake("bob")
            await until(lambda: attempts)
            turn = hive.turns["bob"]
            turn.cancel()  # as Daemon.stop does
            await asyncio.gather(turn, return_exceptions=True)
            await asyncio.sleep(0.5)
            assert attempts == ["bob"] and hive.turns == {}, "no turn after the stop's cancel"

        asyncio.run(main())
        bob = get_agent(store, "bob")
        assert bob.state == "sleeping"
        # Its mail is delivered, not read: the next daemon's first turn takes it.
        assert [m.state for m in broker.inbox(store, "bob")] == ["delivered"]
