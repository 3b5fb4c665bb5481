"""CLI start-up against a bare ``python -c pass`` of the same interpreter.

``python -m benchmarks --startup``: ``hal --version``, ``hal --help`` and ``hal task list``
with 100 tasks in the store, each run ``runs`` times interleaved with the bare interpreter
so that both see the same machine load. Each row gives the median wall time over the
baseline (the target's measure) and, because wall time on a busy machine counts the waits
for a CPU, the median CPU time (user + system) over the baseline's as well; and how many
modules the command imports, here and at ``BEFORE_REV`` (main before lazy subcommands).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cases import Result
from benchmarks.sse import _checkout, _modules

ROOT = Path(__file__).resolve().parent.parent
BEFORE_REV = "f5b3ab8"
"""main just before ``hal9999.cli.lazy`` (every subcommand imported at start-up)."""
COMMANDS = (
    ("hal --version", ["--version"], 40.0),
    ("hal --help", ["--help"], 80.0),
    ("hal task list, 100 tasks", ["task", "list"], 100.0),
)
"""Label, arguments, and the target in ms over the bare interpreter."""


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU time (ms) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000, cpu * 1000


def _fill(home: Path, count: int) -> None:
    """``count`` finished tasks in the store of ``home``."""
    from tests.tasks.test_recovery import make_task

    from hal9999.store import Store

    store = Store.open(home)
    for n in range(count):
        store.insert_task(make_task(home, f"b{n:07d}", "succeeded", created_at=1_000 + n))
    store.close()


def startup_cases(runs: int) -> list[Result]:
    """The three start-up rows (median of ``runs`` each)."""
    tmp = Path(tempfile.mkdtemp(prefix="hal-startup-"))
    home = tmp / "home"
    home.mkdir()
    _fill(home, 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(home), HAL_NO_DAEMON="1", PYTHONPATH=str(ROOT / "src"))
    results = []
    try:
        before_src = _checkout(BEFORE_REV, tmp / "before")
        bare = [sys.executable, "-c", "pass"]
        for label, args, target in COMMANDS:
            hal = [sys.executable, "-m", "hal9999", *args]
            walls: list[float] = []
            cpus: list[float] = []
            base_walls: list[float] = []
            base_cpus: list[float] = []
            for _ in range(2):  # warm the page cache
                _run(hal, env)
                _run(bare, env)
            for _ in range(runs):
                wall, cpu = _run(hal, env)
                walls.append(wall)
                cpus.append(cpu)
                wall, cpu = _run(bare, env)
                base_walls.append(wall)
                base_cpus.append(cpu)
            wall, base = statistics.median(walls), statistics.median(base_walls)
            cpu, base_cpu = statistics.median(cpus), statistics.median(base_cpus)
            loaded = _modules(ROOT / "src", args, env)
            loaded_before = _modules(before_src, args, env)
            results.append(
                Result(
                    f"start-up: {label}",
                    wall,
                    "ms",
                    f"python -c pass {base:.1f} ms; CPU +{cpu - base_cpu:.0f} ms; "
                    f"modules {loaded} (before {loaded_before})",
                    f"{wall - base:+.0f} ms",
                    f"<= +{target:.0f} ms",
                    wall - base <= target,
                )
            )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "before")],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    return results
