"""The daemon's rows: tasks per second through ``hal serve`` (with its CPU per task and the
processes a task starts) and its RSS with tasks running and queued."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cases import Result, hal, hal_env, make_repo, start_daemon
from benchmarks.profile import (
    become_subreaper,
    daemon_cpu_ms,
    orphans_reaped,
    parse_trace,
    traced_argv,
)
from hal9999.errors import HalError
from hal9999.server.client import DaemonClient
from hal9999.store import Store


async def throughput_case(count: int, concurrency: int) -> list[Result]:
    """``count`` trivial tasks through the daemon at ``concurrency``."""
    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    repo = make_repo(root)
    env = hal_env(
        root / "home",
        HAL_MAX_CONCURRENT=str(concurrency),
        HAL_BWRAP_MAX_POOL_SIZE=str(concurrency),
        HAL_PROCESS_MANAGER="direct",
    )
    # The daemon an adopted child of this process, the keepers its launchers leave are this
    # process's to reap and count (init's otherwise: their CPU was in no figure).
    become_subreaper()
    client = await start_daemon(env, repo)
    body = {"prompt": "x", "agent": "true {{prompt_file}}", "cwd": str(repo)}
    with orphans_reaped() as detached:
        rate, elapsed, submitted, own, children, lost = await _submit_all(client, body, env, count)
        detached_ms = detached[0]
    await hal(env, repo, "serve", "--stop")
    shutil.rmtree(root, ignore_errors=True)
    spawns = await traced_daemon_spawns(min(count, 20), concurrency)
    return [
        Result(f"{count} tasks via daemon, concurrency {concurrency}", rate, "tasks/s",
               f"{elapsed:.1f} s total ({submitted:.1f} s to submit); daemon CPU/task "
               f"{own / count:.1f} ms + children {children / count:.1f} ms + detached "
               f"{detached_ms / count:.1f} ms; per task: {spawns}",
               f"{lost} lost", ">= 40/s, 0 lost", rate >= 40 and lost == 0)
    ]  # fmt: skip


async def _submit_all(
    client: DaemonClient, body: dict[str, str], env: dict[str, str], count: int
) -> tuple[float, float, float, float, float, int]:
    """``count`` tasks posted 32 at a time, waited for: tasks/s, seconds in all and to
    submit, the daemon's own and its children's CPU (ms), and how many did not succeed."""
    cpu_before = daemon_cpu_ms(client.info.pid)
    start = time.perf_counter()
    sem = asyncio.Semaphore(32)

    async def submit() -> str:
        async with sem:
            return str((await client.call("POST", "/v1/tasks", body))["id"])

    ids = await asyncio.gather(*(submit() for _ in range(count)))
    submitted = time.perf_counter() - start
    home = Path(env["HAL_HOME"])
    store = Store.open(home)
    active = ["queued", "provisioning", "preparing", "running", "collecting"]
    # Polling the store: the daemon is another process, there is nothing to await.
    while store.list_tasks(status=active, limit=1):  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    elapsed = time.perf_counter() - start
    cpu_after = daemon_cpu_ms(client.info.pid)
    own, children = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    done = {t.id: t.status for t in store.list_tasks()}
    store.close()
    lost = sum(1 for i in ids if done.get(i) != "succeeded")
    return count / elapsed, elapsed, submitted, own, children, lost


async def traced_daemon_spawns(count: int, concurrency: int) -> str:
    """The processes a task starts in the daemon (per task, over ``count`` tasks): a
    foreground ``hal serve`` under strace, counted from the first submission to the last
    task's end (its own start-up and stop are left out)."""
    if shutil.which("strace") is None:
        return "processes not counted (no strace)"
    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    repo = make_repo(root)
    home = root / "home"
    env = hal_env(
        home,
        HAL_MAX_CONCURRENT=str(concurrency),
        HAL_BWRAP_MAX_POOL_SIZE=str(concurrency),
        HAL_PROCESS_MANAGER="direct",
    )
    trace = root / "trace"
    serve = await asyncio.create_subprocess_exec(
        *traced_argv(trace), sys.executable, "-m", "hal9999", "serve", cwd=repo, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = None
        deadline = time.monotonic() + 120
        while client is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            client = DaemonClient.find(home)
        assert client is not None, "hal serve did not start under strace"
        body = {"prompt": "x", "agent": "true {{prompt_file}}", "cwd": str(repo)}
        await client.call("POST", "/v1/tasks", body)  # the pool's first sandbox, warmed
        store = Store.open(home)
        active = ["queued", "provisioning", "preparing", "running", "collecting"]
        while store.list_tasks(status=active, limit=1):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        start = trace.stat().st_size
        for _ in range(count):
            await client.call("POST", "/v1/tasks", body)
        while store.list_tasks(status=active, limit=1):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        store.close()
        with trace.open("rb") as f:
            f.seek(start)
            part = f.read().decode(errors="replace")
        await hal(env, repo, "serve", "--stop")
    finally:
        if serve.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(serve.wait(), 30)
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
        shutil.rmtree(root, ignore_errors=True)
    return parse_trace(part.split("\n", 1)[-1]).per(count)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def rss_case(count: int, queued: int = 0, idle_window: float = 10) -> list[Result]:
    """RSS of ``hal serve`` with ``count`` tasks running and ``queued`` more waiting for a
    slot (the issue's 100 running + 1,000 queued), and the daemon's CPU meanwhile."""
    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    repo = make_repo(root)
    env = hal_env(root / "home", HAL_MAX_CONCURRENT=str(count), HAL_BWRAP_MAX_POOL_SIZE=str(count))
    client = await start_daemon(env, repo)
    body = {"prompt": "x", "agent": "sleep 600", "cwd": str(repo)}
    ids = [str((await client.call("POST", "/v1/tasks", body))["id"]) for _ in range(count)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        tasks = await client.call("GET", "/v1/tasks", query={"status": "running"})
        if len(tasks) >= count:
            break
        await asyncio.sleep(0.5)
    sem = asyncio.Semaphore(32)

    async def submit() -> str:
        async with sem:
            return str((await client.call("POST", "/v1/tasks", body))["id"])

    ids += await asyncio.gather(*(submit() for _ in range(queued)))
    waiting = await client.call("GET", "/v1/tasks", query={"status": "queued"})
    status = await client.call("GET", "/v1/status")
    rss = rss_kib(status["pid"]) / 1024
    # What the daemon spends following idle agents (and keeping the queue): its CPU, and
    # its children's (tmux clients, say), over a window with nothing else to do.
    await asyncio.sleep(2)
    before, began = daemon_cpu_ms(status["pid"]), time.monotonic()
    await asyncio.sleep(idle_window)
    after, took = daemon_cpu_ms(status["pid"]), time.monotonic() - began
    own = (after[0] - before[0]) / took / 10
    children = (after[1] - before[1]) / took / 10

    async def cancel(task_id: str) -> None:
        async with sem:
            with contextlib.suppress(HalError):  # one that ended meanwhile
                await client.call("POST", f"/v1/tasks/{task_id}/cancel")

    # The queued ones first (none of them may start), then the running ones.
    await asyncio.gather(*(cancel(task_id) for task_id in ids[count:]))
    await asyncio.gather(*(cancel(task_id) for task_id in ids[:count]))
    await hal(env, repo, "serve", "--stop")
    shutil.rmtree(root, ignore_errors=True)
    label = f"RSS of hal serve, {len(tasks)} tasks running"
    if queued:
        label += f" + {len(waiting):,} queued"
    full = len(tasks) >= count and len(waiting) >= queued
    return [
        Result(label, rss, "MiB", "-", "-", "<= 150 MiB", rss <= 150 and full),
        Result(f"CPU of hal serve meanwhile (agents idle), over {took:.0f} s", own + children,
               "% of a core", f"own {own:.1f} %, children {children:.1f} %", "-", "-", full),
    ]  # fmt: skip
