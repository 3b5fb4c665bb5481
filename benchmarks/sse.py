"""The daemon's server stack: event latency to SSE clients, fan-out, and CLI start-up.

- **agent line -> SSE client**: a custom agent prints lines stamped with the wall clock; a
  client following ``/v1/events/stream`` of a real ``hal serve`` records, per line, the time
  from the print to the arrival of the event that carries it (agent -> log -> runner's pump
  -> event log + index -> bus -> feed -> SSE). With 20 tasks printing at once, against the
  same with one task (same run).
- **SSE fan-out**: the same with 50 clients: every client must get every event once, in
  order; the delay, against the one-client figure.
- **start-up**: ``hal --version``, ``hal task list`` and ``hal run --help`` (which imports
  the run command) at ``SERVER_REV`` (Starlette and uvicorn replace the hand-written HTTP
  server) against its parent ``BASELINE_REV``: checkouts of exactly the change, compiled to
  bytecode alike, run interleaved so both see the same machine load.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.server.sse_load import sse_load

from benchmarks.cases import Result

BASELINE_REV = "56b142a"
"""main just before Starlette/uvicorn replaced server/http.py..."""
SERVER_REV = "c1842ce"
"""...and just after."""
ROOT = Path(__file__).resolve().parent.parent


async def latency_cases(lines: int) -> list[Result]:
    """Line -> SSE delay: 1 task, 20 tasks, 20 tasks with 50 clients."""
    results = []
    with tempfile.TemporaryDirectory(prefix="hal-sse-") as tmp:
        one = await sse_load(Path(tmp) / "a", clients=1, tasks=1, lines=lines)
        busy = await sse_load(Path(tmp) / "b", clients=1, tasks=20, lines=lines)
        fan = await sse_load(Path(tmp) / "c", clients=50, tasks=20, lines=lines)
    base = one.median_ms()
    results.append(
        Result(
            "agent line -> SSE client, 20 busy tasks (median)",
            busy.median_ms(),
            "ms",
            f"1 task {base:.1f} ms",
            f"{busy.median_ms() / base:.2f}x",
            "<= 100 ms",
            busy.median_ms() <= 100 and not busy.problems(),
            f"p95 {busy.p95_ms():.0f} ms",
        )
    )
    lost = len(fan.problems())
    results.append(
        Result(
            "SSE fan-out to 50 clients, 20 busy tasks (median delay)",
            fan.median_ms(),
            "ms",
            f"1 client {busy.median_ms():.1f} ms",
            f"{fan.median_ms() / busy.median_ms():.2f}x",
            "0 clients with a lost or duplicated event",
            lost == 0,
            f"{len(fan.expected)} events x 50 clients, {lost} clients with a problem, "
            f"p95 {fan.p95_ms():.0f} ms, daemon CPU {fan.daemon_cpu_s:.1f} s",
        )
    )
    results.append(
        Result(
            "RSS of hal serve (peak), 50 SSE clients, 20 tasks",
            fan.rss_mib,
            "MiB",
            f"1 client {busy.rss_mib:.1f} MiB",
            f"+{fan.rss_mib - busy.rss_mib:.1f} MiB",
            "<= 150 MiB",
            fan.rss_mib <= 150,
        )
    )
    return results


def _time_cli(src: Path, args: list[str], env: dict[str, str]) -> float:
    """CPU time (user + system, ms) of one ``hal`` run: unlike wall time, it does not count
    the waits for a CPU on a machine that other work keeps busy."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "hal9999", *args],
        env={**env, "PYTHONPATH": str(src)},
        capture_output=True,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used * 1000


_COUNT_MODULES = """
import runpy, sys
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("\\n%d\\n" % len(sys.modules))
"""


def _modules(src: Path, args: list[str], env: dict[str, str]) -> int:
    """How many modules one ``hal`` run has imported when it exits."""
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_MODULES, *args],
        env={**env, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stderr.strip().splitlines()[-1])


def _checkout(rev: str, where: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(where / "src")],
        capture_output=True,
        check=False,
    )
    return where / "src"


def startup_cases(
    runs: int, baseline_rev: str = BASELINE_REV, rev: str = SERVER_REV
) -> list[Result]:
    """CLI start-up at ``rev`` vs ``baseline_rev`` (interleaved runs)."""
    tmp = Path(tempfile.mkdtemp(prefix="hal-startup-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp / "home"), HAL_NO_DAEMON="1")
    results = []
    try:
        old, new_src = _checkout(baseline_rev, tmp / "old"), _checkout(rev, tmp / "new")
        for label, args in (("hal --version", ["--version"]), ("hal task list", ["task", "list"]),
                            ("hal run --help", ["run", "--help"])):  # fmt: skip
            new_t: list[float] = []
            old_t: list[float] = []
            for _ in range(2):  # warm caches
                _time_cli(new_src, args, env)
                _time_cli(old, args, env)
            for _ in range(runs):
                new_t.append(_time_cli(new_src, args, env))
                old_t.append(_time_cli(old, args, env))
            new, before = statistics.median(new_t), statistics.median(old_t)
            loaded, loaded_before = _modules(new_src, args, env), _modules(old, args, env)
            results.append(
                Result(
                    f"start-up CPU: {label}",
                    new,
                    "ms",
                    f"before {before:.1f} ms; modules {loaded} (before {loaded_before})",
                    f"{new - before:+.1f} ms",
                    "<= +10 ms",
                    new - before <= 10,
                )
            )
    finally:
        for name in ("old", "new"):
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / name)],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(tmp, ignore_errors=True)
    return results


async def sse_cases(quick: bool) -> list[Result]:
    """Every row of this module."""
    return [
        *startup_cases(10 if quick else 30),
        *await latency_cases(40 if quick else 100),
    ]
