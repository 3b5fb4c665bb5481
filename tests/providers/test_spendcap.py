"""The day's machine-hours cap holds for machines that already run (cloudspend.SpendGuard):
against the DigitalOcean and Morph fakes, with a clock the test moves, running machines are
checkpointed and deleted before the day passes the cap; their sandboxes then fail with
the spend-cap error, and the session keeps the work of the checkpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hal9999.errors import ExecError, SpendCapReached
from hal9999.providers.cloud.host import CloudHostProvider
from hal9999.providers.cloud.spend import SpendCap, SpendGuard, SpendLedger, seconds_to_cap
from hal9999.providers.registry import load_provider
from hal9999.spec import ArgvCommand, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.ssh, pytest.mark.bwrap,
              pytest.mark.usefixtures("ssh_connections_closed")]  # fmt: skip

CAP = {"max_machine_hours_per_day": 2.0, "reserve_hours": 0.0, "stop_margin_s": 120.0,
       "spend_check_s": 0.05}  # fmt: skip


class Clock:
    """Now, as the test says (starts an hour into the current UTC day)."""

    def __init__(self) -> None:
        self.now = time.time() // 86400 * 86400 + 3600

    def __call__(self) -> float:
        return self.now

    def hours(self, hours: float) -> None:
        self.now += hours * 3600


@pytest.fixture(params=["digitalocean", "morph"])
def cloud(request: pytest.FixtureRequest, hal_home: Path) -> tuple[CloudHostProvider[Any], Any]:
    """A cloud provider on its fake with the cap above, and the fake."""
    name = request.param
    fake = request.getfixturevalue("fake_do" if name == "digitalocean" else "fake_morph")
    settings = request.getfixturevalue(f"fake_{'do' if name == 'digitalocean' else name}"
                                       "_settings")  # fmt: skip
    provider = load_provider(name, state_dir=hal_home / "sandboxes" / name,
                             settings=settings | CAP)  # fmt: skip
    assert isinstance(provider, CloudHostProvider)
    return provider, fake


async def wait_for(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_running_machines_are_stopped_before_the_day_passes_the_cap(
    cloud: tuple[CloudHostProvider[Any], Any], tmp_path: Path
) -> None:
    provider, fake = cloud
    clock = Clock()
    provider.ledger.clock = clock
    workspaces = [tmp_path / "a", tmp_path / "b"]
    sandboxes = []
    for workspace in workspaces:
        workspace.mkdir()
        spec = SandboxSpec(provider=provider.name, network="host", workspace=workspace)
        sandboxes.append(await provider.create(spec))
    first = sandboxes[0]
    assert (await first.exec(ShellCommand(script="echo step1 > progress"))).ok
    busy = asyncio.create_task(first.exec(ShellCommand(script="echo step2 >> progress; "
                                                       "sleep 120")))  # fmt: skip
    await asyncio.sleep(0.5)
    assert len(fake.live()) == 2

    # 1.8 of 2 machine-hours: two machines reach the cap in 6 minutes, past the margin.
    clock.hours(0.9)
    await asyncio.sleep(0.5)
    assert len(fake.live()) == 2 and not busy.done()
    # 1.94: they would pass it in 108 s, within the 120 s margin: both go now.
    clock.hours(0.07)
    await wait_for("the machines to be deleted", lambda: fake.live() == [])
    for _ in range(100):  # the spend record ends right after the delete
        if not await provider.ledger.open_machines():
            break
        await asyncio.sleep(0.05)
    assert await provider.ledger.open_machines() == []
    _, billed = await provider.ledger.billed()
    assert billed <= 2.0 + 1e-6  # never past the cap, the running machines included

    # The command under way was killed; the sandbox says why from now on, in one line.
    try:
        killed = await asyncio.wait_for(busy, 60)
    except (ExecError, SpendCapReached):
        pass
    else:
        assert not killed.ok
    with pytest.raises(SpendCapReached, match="spend cap") as info:
        await first.exec(ArgvCommand(argv=("true",)))
    assert info.value.code == "spend_cap" and "max_machine_hours_per_day" in (info.value.hint or "")
    assert "\n" not in info.value.one_line()
    # The work of the checkpoint (the stop brings the session back) is kept.
    assert (workspaces[0] / "progress").read_text() == "step1\nstep2\n"
    assert await provider.list() == []
    await provider.spend_guard().stop()


def test_seconds_to_cap() -> None:
    assert seconds_to_cap(0, 5.0, 2.0) == float("inf")
    assert seconds_to_cap(2, 1.8, 2.0) == pytest.approx(360)
    assert seconds_to_cap(1, 2.5, 2.0) == 0.0


async def test_a_failing_stop_is_tried_again_and_never_spins(tmp_path: Path) -> None:
    cap = SpendCap(max_machines=2, max_machine_hours_per_day=1.0, reserve_hours=0.0,
                   stop_margin_s=60.0, spend_check_s=0.05)  # fmt: skip
    home = tmp_path / "home"
    ledger = SpendLedger("fakecloud", home / "sandboxes" / "fakecloud", cap)
    clock = Clock()
    ledger.clock = clock
    await ledger.reserve("m1")
    tries: list[str] = []

    async def stop(machine_id: str) -> None:
        tries.append(machine_id)
        if len(tries) < 3:
            raise ExecError("the machine does not answer")
        await ledger.end(machine_id)

    guard = SpendGuard(ledger, stop)
    guard.start()
    await asyncio.sleep(0.2)
    assert tries == []  # an hour left, a minute of margin: nothing to do
    clock.hours(0.99)
    await wait_for("the third try", lambda: len(tries) >= 3)
    await asyncio.sleep(0.3)
    assert tries == ["m1"] * 3  # retried at the check interval, and done once it worked
    assert await ledger.open_machines() == []
    assert ledger.capped("m1") is not None and ledger.capped("m2") is None
    await guard.stop()
