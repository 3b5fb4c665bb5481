"""Run the benchmarks and print a table: ``python -m benchmarks [--quick] [--write-docs]``.

Every ratio is against a baseline measured in the same run. ``--write-docs`` replaces the
daemon/pool section of ``docs/benchmarks.md`` (between its markers) with this run's table.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

from benchmarks.cases import (
    Result,
    events_case,
    hal_run_case,
    large_repo_case,
    machine,
    sandbox_cases,
)
from benchmarks.daemon import rss_case, throughput_case
from hal9999.children import pidfd_child_watcher

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN = "<!-- daemon-pool-benchmarks:begin -->"
END = "<!-- daemon-pool-benchmarks:end -->"


def table(results: list[Result]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| measurement | figure | baseline (same run) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        figure = f"{r.value:,.1f} {r.unit}"
        lines.append(
            f"| {r.name} | {figure} | {r.baseline} | {r.ratio} | {r.target} | "
            f"{'yes' if r.met else 'NO'} |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Put ``text`` between the markers of docs/benchmarks.md (adding them when missing)."""
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(current)


async def main(args: argparse.Namespace) -> list[Result]:
    """Run every case in turn (only the qemu ones with ``--qemu``)."""
    results: list[Result] = []
    if args.startup:
        from benchmarks.startup import startup_cases

        print("CLI start-up ...", file=sys.stderr)
        return startup_cases(5 if args.quick else 10)
    if args.sse:
        from benchmarks.sse import sse_cases

        print("server stack: start-up, SSE latency and fan-out ...", file=sys.stderr)
        return await sse_cases(args.quick)
    if args.gateway:
        from benchmarks.gateway import gateway_cases

        print("gateway ...", file=sys.stderr)
        return await gateway_cases(300 if args.quick else 2000)
    if args.dashboard:
        from benchmarks.dashboard import dashboard_cases

        print("dashboard (chromium, 20 busy tasks) ...", file=sys.stderr)
        return await dashboard_cases(5 if args.quick else 20)
    if args.qemu:
        from benchmarks.qemu import qemu_cases

        print("qemu (cold boots take a while under TCG) ...", file=sys.stderr)
        return await qemu_cases(3 if args.quick else 7, 1 if args.quick else 3)
    runs = 10 if args.quick else 30
    print("sandboxes ...", file=sys.stderr)
    results += await sandbox_cases(runs)
    print("hal run ...", file=sys.stderr)
    results += await hal_run_case(3 if args.quick else 7)
    results += await large_repo_case(3 if args.quick else 7)
    print("throughput ...", file=sys.stderr)
    results += await throughput_case(100 if args.quick else args.tasks, 16)
    print("events ...", file=sys.stderr)
    results += events_case(20_000 if args.quick else 100_000)
    print("rss ...", file=sys.stderr)
    results += await rss_case(20, 200) if args.quick else await rss_case(100, 1000)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="Fewer runs and tasks.")
    parser.add_argument("--tasks", type=int, default=1000, help="Tasks for the throughput run.")
    parser.add_argument("--write-docs", action="store_true", help="Record in docs/benchmarks.md.")
    parser.add_argument(
        "--qemu", action="store_true", help="The qemu microVM cases (needs an image)."
    )
    parser.add_argument(
        "--gateway", action="store_true", help="The LLM gateway's added latency and throughput."
    )
    parser.add_argument(
        "--dashboard", action="store_true", help="Agent line to dashboard page (chromium)."
    )
    parser.add_argument(
        "--sse", action="store_true", help="CLI start-up, SSE latency and fan-out (hal serve)."
    )
    parser.add_argument(
        "--startup", action="store_true", help="CLI start-up against a bare python -c pass."
    )
    args = parser.parse_args()
    if shutil.which("bwrap") is None or shutil.which("tmux") is None:
        sys.exit("the benchmarks need bubblewrap and tmux (bash scripts/test.sh installs them)")
    if args.qemu:
        from benchmarks.qemu import qemu_ready

        problem = qemu_ready()
        if problem:
            sys.exit(f"the qemu benchmarks need an image: {problem}")
        BEGIN, END = "<!-- qemu-benchmarks:begin -->", "<!-- qemu-benchmarks:end -->"
    if args.gateway:
        BEGIN, END = "<!-- gateway-benchmarks:begin -->", "<!-- gateway-benchmarks:end -->"
    if args.dashboard:
        BEGIN, END = "<!-- dashboard-benchmarks:begin -->", "<!-- dashboard-benchmarks:end -->"
    if args.sse:
        BEGIN, END = "<!-- sse-benchmarks:begin -->", "<!-- sse-benchmarks:end -->"
    if args.startup:
        BEGIN, END = "<!-- startup-benchmarks:begin -->", "<!-- startup-benchmarks:end -->"
    # The loop set up as hal's own are (cli.app.run_async, hal serve): subprocesses waited
    # for through pidfds, for the baselines as for hal's figures.
    with pidfd_child_watcher():
        results = asyncio.run(main(args))
    stamp = time.strftime("%Y-%m-%d")
    text = f"Measured {stamp} on {machine()}{' (--quick)' if args.quick else ''}.\n\n"
    text += table(results)
    print(text)
    if args.write_docs:
        write_docs(text)
