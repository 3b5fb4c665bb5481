"""The scale simulation (benchmarks/scale.py) runs the real scheduler and pool to the end:
every task succeeds and the pool never asks the simulated fleet for more than it has."""

from __future__ import annotations

from pathlib import Path

from benchmarks.scale import SLOTS_PER_NODE, simulate, table


async def test_a_small_fleet_runs_every_task_within_its_capacity(tmp_path: Path) -> None:
    row = await simulate(nodes=1, waves=2, root=tmp_path)
    assert row.tasks == 2 * SLOTS_PER_NODE and row.tasks_per_s > 0
    assert row.dispatches >= 1 and row.cpu_ms_per_task > 0
    assert "1 x 16 = 16" in table([row])
