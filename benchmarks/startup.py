"""CLI start-up against a bare baseline of the same machine.

``python -m benchmarks --startup``: ``hal --version``, ``hal --help``, ``hal task list`` and
``hal task show ID`` (100 tasks in the store) against ``python -c pass``, and ``hal run``
through a running ``hal serve`` against ``bwrap ... true``; each run ``runs`` times,
interleaved with its baseline so that both see the same machine load, with a user config
file present (as real users have one). The measure is the median CPU time (user + system)
over the baseline's: wall time on a busy machine counts the waits for a CPU. The median
wall time and how many modules the command imports are given too.
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

from benchmarks.cases import BARE_BWRAP, Result, make_repo
from benchmarks.sse import _modules

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (
    ("hal --version", ["--version"], 40.0),
    ("hal --help", ["--help"], 80.0),
    ("hal task list, 100 tasks", ["task", "list"], 150.0),
    ("hal task show ID, 100 tasks", ["task", "show", "b0000042"], 150.0),
)
"""Label, arguments, and the target in CPU ms over ``python -c pass``."""
RUN_TARGET_MS = 100.0
"""``hal run`` through ``hal serve``: the target in CPU ms over ``bwrap ... true``."""
USER_CONFIG = 'default_provider = "bwrap"\ntimeout_s = 3600\n\n[gateway]\nconcurrency = 8\n'
"""The user config file every command reads (``$XDG_CONFIG_HOME/hal9999/config.toml``)."""


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU time (ms) of one process (and the children it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, (argv, done.stderr[-2000:])
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


def _row(
    label: str,
    argv: list[str],
    bare: list[str],
    bare_label: str,
    target: float,
    env: dict[str, str],
    runs: int,
    cwd: Path | None = None,
    modules: list[str] | None = None,
) -> Result:
    """One row: ``argv`` and ``bare`` interleaved, ``runs`` times each after a warm-up."""
    walls: list[float] = []
    cpus: list[float] = []
    base_walls: list[float] = []
    base_cpus: list[float] = []
    for _ in range(2):  # warm the page cache (and a daemon's first task)
        _run(argv, env, cwd)
        _run(bare, env, cwd)
    for _ in range(runs):
        wall, cpu = _run(argv, env, cwd)
        walls.append(wall)
        cpus.append(cpu)
        wall, cpu = _run(bare, env, cwd)
        base_walls.append(wall)
        base_cpus.append(cpu)
    wall, base = statistics.median(walls), statistics.median(base_walls)
    cpu, base_cpu = statistics.median(cpus), statistics.median(base_cpus)
    loaded = f"; modules {_modules(ROOT / 'src', modules, env)}" if modules is not None else ""
    return Result(
        f"start-up: {label}",
        cpu,
        "ms CPU",
        f"{bare_label} {base_cpu:.1f} ms CPU; wall {wall:.1f} ms (baseline {base:.1f}){loaded}",
        f"{cpu - base_cpu:+.0f} ms",
        f"<= +{target:.0f} ms",
        cpu - base_cpu <= target,
    )


def startup_cases(runs: int) -> list[Result]:
    """The start-up rows (median of ``runs`` each)."""
    tmp = Path(tempfile.mkdtemp(prefix="hal-startup-"))
    home = tmp / "home"
    home.mkdir()
    _fill(home, 100)
    config = tmp / "xdg" / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(
        HAL_HOME=str(home),
        HAL_NO_DAEMON="1",
        XDG_CONFIG_HOME=str(tmp / "xdg"),
        PYTHONPATH=str(ROOT / "src"),
    )
    hal = [sys.executable, "-m", "hal9999"]
    bare = [sys.executable, "-c", "pass"]
    results = []
    try:
        for label, args, target in COMMANDS:
            results.append(
                _row(label, [*hal, *args], bare, "python -c pass", target, env, runs,
                     modules=args)
            )  # fmt: skip
        served = {k: v for k, v in env.items() if k != "HAL_NO_DAEMON"}
        repo = make_repo(tmp)
        _run([*hal, "serve", "--detach"], served, repo)
        try:
            agent = ["run", "--agent", "true {{prompt_file}}", "x"]
            results.append(
                _row("hal run, via hal serve", [*hal, *agent], BARE_BWRAP, "bwrap true",
                     RUN_TARGET_MS, served, runs, cwd=repo)
            )  # fmt: skip
        finally:
            subprocess.run([*hal, "serve", "--stop"], env=served, cwd=repo, check=False,
                           capture_output=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results
