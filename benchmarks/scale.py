"""Scale simulation: the real scheduler, warm pool and SQLite store over a simulated fleet.

    python -m benchmarks.scale [--nodes 1,10,25,50,100] [--waves 3] [--write-docs]

A simulated provider stands for ``nodes`` machines of 16 sandboxes each (pool and
scheduler limits ``nodes * 16``). Its latencies are drawn (lognormal, seeded) around
figures measured in this repository, scaled down by ``TIME_SCALE`` so a run takes seconds:
a warm hand-over is an ssh push (~20 ms measured, tests/providers/test_ssh.py), a new
sandbox a machine boot (DigitalOcean ~45 s, vendor-typical; not measurable here), a reset
~0.5 s, a task's agent run ~120 s. The task lifecycle is the real store's: insert queued,
compare-and-set through provisioning, preparing, running, collecting, succeeded (each write
off the loop, as the runner does); the agent, git and event log are not run (their costs
are in docs/benchmarks.md). Reported per fleet size: tasks/s, the daemon's CPU per task
(process time: loop, threads, SQLite), and the scheduler's own share (``dispatch``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal9999.pool.pool import WarmPool
from hal9999.pool.settings import ProviderSettings, SchedulerSettings
from hal9999.pool.slots import SlotDir
from hal9999.providers.base import Capabilities, ExecResult, SandboxInfo
from hal9999.spec import SandboxSpec
from hal9999.store import Store, TaskRecord
from hal9999.tasks.scheduler import Scheduler

SLOTS_PER_NODE = 16
TIME_SCALE = 0.01
"""Simulated seconds per real second of the figures below (1/100: a 45 s boot takes 0.45 s)."""
LATENCY_S = {"hand_over": 0.020, "create": 45.0, "reset": 0.5, "destroy": 5.0, "run": 120.0}
"""Median real-world latencies (see the module docstring for where each comes from)."""
PHASES = ("provisioning", "preparing", "running", "collecting", "succeeded")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "scale.md"
BEGIN, END = "<!-- scale-simulation:begin -->", "<!-- scale-simulation:end -->"


def draw(rng: random.Random, what: str) -> float:
    """A latency around the median of ``what`` (lognormal, sigma 0.3), scaled."""
    return LATENCY_S[what] * rng.lognormvariate(0, 0.3) * TIME_SCALE


class SimSandbox:
    """The handle the pool gets: only an id (commands are not simulated)."""

    def __init__(self, sandbox_id: str, spec: SandboxSpec) -> None:
        self.id, self.spec, self.provider = sandbox_id, spec, "sim"

    async def exec(self, *args: Any, **kw: Any) -> ExecResult:
        """Unused by the simulation."""
        return ExecResult(0, b"", b"")


class SimProvider:
    """A fleet of ``nodes`` x 16 sandboxes with drawn latencies; resets are safe."""

    name = "sim"
    capabilities = Capabilities(isolation="fake")

    def __init__(self, nodes: int, rng: random.Random) -> None:
        self.capacity = nodes * SLOTS_PER_NODE
        self.rng = rng
        self.live: dict[str, SandboxSpec] = {}

    async def create(self, spec: SandboxSpec) -> SimSandbox:
        """Boot a machine (scaled)."""
        if len(self.live) >= self.capacity:
            raise RuntimeError("the simulated fleet is full: the pool passed its cap")
        sandbox_id = secrets.token_hex(6)
        self.live[sandbox_id] = spec
        await asyncio.sleep(draw(self.rng, "create"))
        return SimSandbox(sandbox_id, spec)

    async def get(self, sandbox_id: str) -> SimSandbox:
        """A handle (a warm hand-over: an ssh push)."""
        await asyncio.sleep(draw(self.rng, "hand_over"))
        return SimSandbox(sandbox_id, self.live[sandbox_id])

    async def list(self) -> list[SandboxInfo]:
        """Every simulated sandbox."""
        return [SandboxInfo(i, "sim", "running", s, 0.0) for i, s in self.live.items()]

    async def stop(self, sandbox_id: str) -> None:
        """Nothing runs."""

    async def start(self, sandbox_id: str) -> SimSandbox:
        """As get."""
        return await self.get(sandbox_id)

    async def reset(self, sandbox_id: str) -> None:
        """A reset for the next task (scaled)."""
        await asyncio.sleep(draw(self.rng, "reset"))

    def resets_safely(self) -> bool:
        """Yes: the pool keeps sandboxes warm."""
        return True

    async def destroy(self, sandbox_id: str) -> None:
        """Delete (scaled)."""
        await asyncio.sleep(draw(self.rng, "destroy"))
        self.live.pop(sandbox_id, None)


@dataclass
class SimService:
    """What the scheduler needs of a TaskService: the store and ``run``."""

    store: Store
    pool: WarmPool
    spec: SandboxSpec
    rng: random.Random

    async def run(self, task_id: str, **_: Any) -> TaskRecord:
        """A task's life in the store, holding a pooled sandbox while it "runs"."""
        status = "queued"
        record: TaskRecord | None = None
        lease = None
        try:
            for phase in PHASES:
                if phase == "preparing":
                    lease = await self.pool.claim(self.spec, task_id=task_id)
                if phase == "collecting":
                    await asyncio.sleep(draw(self.rng, "run"))
                fields: dict[str, Any] = {}
                if phase == "provisioning":
                    fields = {"started_at": time.time()}
                if phase == "succeeded":
                    fields = {"finished_at": time.time(), "exit_code": 0}
                record = await asyncio.to_thread(
                    self.store.set_status, task_id, phase, expect=status, **fields
                )
                status = phase
        finally:
            if lease is not None:
                await self.pool.release(lease)
        assert record is not None
        return record


def task(n: int, root: Path) -> TaskRecord:
    """A queued task record of the simulation."""
    task_id = f"{n:08x}{secrets.token_hex(2)}"
    return TaskRecord(id=task_id, prompt="simulated", agent="sim", provider="sim",
                      process_manager="direct", repo=str(root), repo_kind="local",
                      branch=f"hal/{task_id}", status="queued", created_at=time.time(),
                      session_dir=str(root / task_id))  # fmt: skip


@dataclass
class Row:
    """One fleet size's figures."""

    nodes: int
    tasks: int
    seconds: float
    cpu_ms_per_task: float
    dispatch_ms_per_task: float
    dispatches: int
    queue_scan_rows: int

    @property
    def tasks_per_s(self) -> float:
        """Throughput."""
        return self.tasks / self.seconds


async def simulate(nodes: int, waves: int, root: Path, seed: int = 7) -> Row:
    """Run ``waves`` x the fleet's capacity of tasks through the real scheduler and pool."""
    rng = random.Random(seed)
    capacity = nodes * SLOTS_PER_NODE
    store = Store.open(root / "home")
    provider = SimProvider(nodes, rng)
    limits = ProviderSettings(max_size=capacity, policy="reset")
    pool = WarmPool(providers=lambda _: provider, settings=lambda _: limits,  # type: ignore[arg-type, return-value]
                    slots=SlotDir(root / "home" / "pool"), store=store)  # fmt: skip
    spec = SandboxSpec(provider="sim", network="none")
    service = SimService(store, pool, spec, rng)
    settings = SchedulerSettings(max_concurrent=capacity)
    scheduler = Scheduler(service, settings, lambda _: capacity)  # type: ignore[arg-type]
    scanned = {"rows": 0, "calls": 0, "cpu": 0.0}
    real_dispatch, real_queued = scheduler.dispatch, store.queued_tasks

    def queued(now: float, *, limit: int = 100) -> list[TaskRecord]:
        found = real_queued(now, limit=limit)
        scanned["rows"] += len(found)
        return found

    def dispatch() -> int:
        started = time.process_time()
        try:
            return real_dispatch()
        finally:
            scanned["cpu"] += time.process_time() - started
            scanned["calls"] += 1

    store.queued_tasks = queued  # type: ignore[method-assign]
    scheduler.dispatch = dispatch  # type: ignore[method-assign]
    total = capacity * waves
    for n in range(total):
        store.insert_task(task(n, root))
    loop = asyncio.create_task(scheduler.run_forever())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    scheduler.wake()
    # The scheduler has no "all done" event of its own; its counter is polled.
    while scheduler.finished < total:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await scheduler.shutdown()
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    done = len(store.list_tasks(status=["succeeded"], limit=total + 1))
    assert done == total, f"{done} of {total} tasks succeeded"
    await pool.close()
    store.close()
    return Row(nodes, total, wall, cpu / total * 1000, scanned["cpu"] / total * 1000,
               int(scanned["calls"]), int(scanned["rows"]))  # fmt: skip


def table(rows: list[Row]) -> str:
    """The Markdown table for docs/scale.md."""
    lines = ["| nodes x 16 | tasks | tasks/s | daemon CPU / task | scheduler CPU / task "
             "| dispatch calls | queued rows read |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r.nodes} x 16 = {r.nodes * 16} | {r.tasks} | {r.tasks_per_s:,.1f} "
                     f"| {r.cpu_ms_per_task:.2f} ms | {r.dispatch_ms_per_task:.2f} ms "
                     f"| {r.dispatches:,} | {r.queue_scan_rows:,} |")  # fmt: skip
    return "\n".join(lines)


async def run_all(nodes: list[int], waves: int) -> AsyncIterator[Row]:
    """Each fleet size in a fresh HAL_HOME."""
    for count in nodes:
        with tempfile.TemporaryDirectory(prefix="hal-scale-") as tmp:
            yield await simulate(count, waves, Path(tmp))


def write_docs(text: str) -> None:
    """Put ``text`` between the markers of docs/scale.md."""
    current = DOCS.read_text()
    head, rest = current.split(BEGIN, 1)
    DOCS.write_text(head + f"{BEGIN}\n{text}\n{END}" + rest.split(END, 1)[1])


def main(argv: Mapping[str, Any] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--nodes", default="1,10,25,50,100")
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    async def go() -> list[Row]:
        return [row async for row in run_all([int(n) for n in args.nodes.split(",")],
                                             args.waves)]  # fmt: skip

    rows = asyncio.run(go())
    text = table(rows)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
