"""The dashboard's live view: from a line an agent writes to that line on the page.

``hal serve`` runs ``busy`` tasks that each print a line every 200 ms, and one probe task that
prints ``probe <unix ms>`` every 100 ms. Chromium (Debian's, through Playwright) shows the
probe's task page; a MutationObserver notes, at the next animation frame after each probe line
is added to the log, how long ago the agent wrote it. Target: median <= 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.cases import Result, hal, hal_env, make_repo

BUSY = """#!/bin/sh
i=0
while [ $i -lt 600 ]; do
  echo "busy $i: some output of a working agent"; i=$((i + 1)); sleep 0.2
done
"""
PROBE = """#!/bin/sh
sleep 5  # the page opens meanwhile
i=0
while [ $i -lt {count} ]; do echo "probe $(date +%s%3N)"; i=$((i + 1)); sleep 0.1; done
"""
WATCH = """() => {
  window.__lat = [];
  const since = Date.now();  // lines written before this came with the snapshot
  new MutationObserver((records) => {
    const added = records.flatMap((r) => [...r.addedNodes].map((n) => n.textContent || ""));
    requestAnimationFrame(() => {  // the frame that shows them
      const now = Date.now();
      for (const text of added)
        for (const m of text.matchAll(/probe (\\d+)/g))
          if (Number(m[1]) >= since) window.__lat.push(now - Number(m[1]));
    });
  }).observe(document.getElementById('log'), { childList: true, subtree: true });
}"""


async def dashboard_cases(busy: int = 20, probes: int = 100) -> list[Result]:
    """Line-to-page latency on the task page with ``busy`` other tasks writing output."""
    from playwright.async_api import async_playwright

    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    repo = make_repo(root)
    (repo / "busy.sh").write_text(BUSY)
    (repo / "probe.sh").write_text(PROBE.format(count=probes))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    await asyncio.to_thread(subprocess.run, [*git, "add", "-A"], cwd=repo, check=True)
    await asyncio.to_thread(subprocess.run, [*git, "commit", "-qm", "agents"], cwd=repo, check=True)
    room = str(busy + 4)
    env = hal_env(root / "home", HAL_MAX_CONCURRENT=room, HAL_BWRAP_MAX_POOL_SIZE=room)
    code, out = await hal(env, repo, "serve", "--detach", "--json")
    assert code == 0, "hal serve did not start"
    link = json.loads(out)["dashboard"]
    base = link.split("/login")[0]
    ids: list[str] = []
    try:
        for name in ["busy"] * busy + ["probe"]:
            _, out = await hal(
                env, repo, "run", "--detach", "--agent", f"sh {name}.sh {{{{prompt_file}}}}", name
            )
            ids.append(out.decode().strip())
        probe = ids[-1]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium",
                                               args=["--no-sandbox"])  # fmt: skip
            page = await browser.new_page()
            await page.goto(link)
            await page.goto(f"{base}/tasks/{probe}")
            await page.wait_for_selector("#log")
            await page.evaluate(WATCH)
            await page.wait_for_function(f"() => window.__lat.length >= {probes - 20}",
                                         timeout=120_000)  # fmt: skip
            latencies = [float(x) for x in await page.evaluate("window.__lat")]
            await browser.close()
    finally:
        for task_id in ids:  # agents outlive `hal serve --stop`: cancel them first
            await hal(env, repo, "task", "cancel", task_id)
        await hal(env, repo, "serve", "--stop")
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median(latencies)
    p95 = sorted(latencies)[int(len(latencies) * 0.95) - 1]
    return [
        Result(f"agent line -> page, {busy} busy tasks (median)", median, "ms",
               f"{len(latencies)} lines", f"p95 {p95:.0f} ms", "<= 100 ms", median <= 100),
    ]  # fmt: skip


if __name__ == "__main__":
    for result in asyncio.run(dashboard_cases()):
        print(result)
