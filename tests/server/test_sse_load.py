"""Load: 50 SSE clients follow a real ``hal serve`` while 20 tasks print; every client gets
every event exactly once, in order, and the daemon's memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.server.sse_load import sse_load

pytestmark = [pytest.mark.slow, pytest.mark.bwrap]

MAX_RSS_MIB = 150
"""The daemon's peak resident memory at most (it is ~55 MiB here; the pool benchmark's
target for 100 running tasks is the same 150 MiB)."""


async def test_fifty_clients_twenty_busy_tasks_no_event_lost_or_duplicated(
    tmp_path: Path,
) -> None:
    result = await sse_load(tmp_path, clients=50, tasks=20, lines=40, interval=0.05)
    assert result.tasks_succeeded == 20, result.tasks_succeeded
    # task_created, phases, sandbox, output chunks and task_end of every task
    assert len(result.expected) >= 20 * 8
    assert result.problems() == []
    assert all(c.delays for c in result.clients)  # the stamped lines did arrive
    assert 0 < result.rss_mib <= MAX_RSS_MIB, result.rss_mib
