"""The skeleton the ssh, ray and kubernetes relays share (providers/remote/relay.py), in process:
the exit status, checkpoints, a stop, a lost host and the last pull, in their order."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncGenerator

import pytest

from hal9999.errors import ExecError
from hal9999.providers.base import StreamEvent
from hal9999.providers.remote import relay as relaycore


class Journal:
    """What happened, in order, as the relay's callables saw it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def pull(self) -> None:
        self.seen.append("pull")

    async def stopped(self) -> None:
        self.seen.append("stopped")

    async def closing(self) -> None:
        self.seen.append("closed")


async def test_the_run_s_status_with_checkpoints_and_a_last_pull() -> None:
    journal = Journal()

    async def run() -> int:
        while journal.seen.count("pull") < 2:  # two checkpoints come while it runs
            await asyncio.sleep(0.01)
        journal.seen.append("ended")
        return 7

    code = await relaycore.follow(run(), pull=journal.pull, every=0.02, stopped=journal.stopped,
                                  closing=journal.closing)  # fmt: skip
    assert code == 7
    # What ran beside the command (a socket channel) closes before the last pull.
    assert journal.seen == ["pull", "pull", "ended", "closed", "pull"]


async def test_a_stop_cancels_the_run_ends_the_command_then_pulls() -> None:
    journal = Journal()
    started = asyncio.Event()

    async def run() -> int:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            journal.seen.append("cancelled")
            raise
        return 0

    following = asyncio.create_task(
        relaycore.follow(run(), pull=journal.pull, every=60, stopped=journal.stopped)
    )
    await started.wait()
    os.kill(os.getpid(), signal.SIGTERM)  # what the process manager sends
    assert await asyncio.wait_for(following, 10) == relaycore.STOPPED
    assert journal.seen == ["cancelled", "stopped", "pull"]


async def test_a_lost_host_is_one_line_and_255(capsys: pytest.CaptureFixture[str]) -> None:
    journal = Journal()

    async def run() -> int:
        raise ExecError("ray node w3 was lost")

    code = await relaycore.follow(run(), pull=journal.pull, every=60, stopped=journal.stopped)
    assert code == relaycore.LOST
    err = capsys.readouterr().err
    assert err.startswith("hal: ray node w3 was lost") and err.count("\n") == 1, err
    assert journal.seen == ["pull"]  # the last checkpoint's work, once more; nothing to stop


async def test_without_final_pull_the_stream_brings_the_work_back_itself() -> None:
    journal = Journal()

    async def run() -> int:
        return 0

    assert await relaycore.follow(run(), pull=journal.pull, every=60, final_pull=False) == 0
    assert journal.seen == []


async def test_events_go_out_whole_and_the_exit_status_last(
    capfd: pytest.CaptureFixture[str],
) -> None:
    big = b"x" * (1 << 20)  # more than a pipe takes at once

    async def events() -> AsyncGenerator[StreamEvent, None]:
        yield StreamEvent("stdout", big)
        yield StreamEvent("stderr", b"warn\n")
        yield StreamEvent("exit", exit_code=3)

    assert await relaycore.write_events(events()) == 3
    out, err = capfd.readouterr()
    assert (len(out), err) == (len(big), "warn\n")


async def test_a_stream_without_an_exit_is_lost() -> None:
    async def events() -> AsyncGenerator[StreamEvent, None]:
        yield StreamEvent("stdout", b"")

    assert await relaycore.write_events(events()) == relaycore.LOST


def test_run_main_maps_failures_to_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def fails() -> int:
        raise OSError("no route to host")

    assert relaycore.run_main(fails, "ssh") == relaycore.LOST
    assert capsys.readouterr().err == "hal: the ssh relay failed: no route to host\n"
