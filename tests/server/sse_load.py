"""Many SSE clients on a real ``hal serve`` while many tasks print: what each client got, how
late, and the daemon's memory. Shared by the load test and ``python -m benchmarks --sse``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hal9999.server.client import DaemonClient
from hal9999.server.runtime import DaemonFiles
from hal9999.store import Store

_STAMP = re.compile(rb"t=(\d+\.\d+)")
_ID = re.compile(rb"^id: (\d+)$", re.M)
ACTIVE = ["queued", "provisioning", "preparing", "running", "collecting"]


def printing_agent(lines: int, interval: float) -> str:
    """A custom agent that prints ``lines`` lines, each stamped with the wall-clock time."""
    return (
        "python3 -u -c 'import time\n"
        f"for i in range({lines}):\n"
        f'    print("line", i, "t=%.6f" % time.time(), flush=True); time.sleep({interval})\''
    )


@dataclass
class Client:
    """One lean SSE client: the ids it got, and the delay of every stamped line."""

    ids: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    error: str | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, url: str, token: str, until: asyncio.Event) -> None:
        """Stream until ``until`` is set (and what is buffered is read)."""
        headers = {"authorization": f"Bearer {token}"}
        buf = b""
        try:
            async with httpx.AsyncClient(timeout=None) as http:
                async with http.stream("GET", url, headers=headers) as response:
                    self.connected.set()
                    if response.status_code != 200:
                        self.error = f"status {response.status_code}"
                        return
                    chunks = response.aiter_bytes()
                    while True:
                        waiting = asyncio.ensure_future(anext(chunks))
                        stop = asyncio.ensure_future(until.wait())
                        done, _ = await asyncio.wait(
                            {waiting, stop}, return_when=asyncio.FIRST_COMPLETED
                        )
                        if waiting not in done:
                            waiting.cancel()
                            with contextlib.suppress(BaseException):
                                await waiting
                            return
                        stop.cancel()
                        now = time.time()
                        buf += waiting.result()
                        *frames, buf = buf.split(b"\n\n")
                        for frame in frames:
                            found = _ID.search(frame)
                            if found is None or b"event: resync" in frame:
                                continue
                            self.ids.append(int(found.group(1)))
                            self.delays += [now - float(t) for t in _STAMP.findall(frame)]
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.connected.set()


def rss_mib(pid: int, field_name: str = "VmHWM") -> float:
    """A process's peak (``VmHWM``) or current (``VmRSS``) resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    """What a run measured."""

    expected: list[int]
    clients: list[Client]
    rss_mib: float
    seconds: float
    tasks_succeeded: int
    daemon_cpu_s: float

    def problems(self) -> list[str]:
        """Clients that lost or duplicated an event (or failed)."""
        out = []
        for n, c in enumerate(self.clients):
            if c.error or c.ids != self.expected:
                out.append(f"client {n}: {len(c.ids)} ids ({len(set(c.ids))} distinct), "
                           f"expected {len(self.expected)}; {c.error or ''}")  # fmt: skip
        return out

    def delays(self) -> list[float]:
        """Every stamped line's delay on every client, in seconds."""
        return [d for c in self.clients for d in c.delays]

    def median_ms(self) -> float:
        """The median delay from a printed line to its delivery."""
        found = self.delays()
        return statistics.median(found) * 1000 if found else float("nan")

    def p95_ms(self) -> float:
        """The 95th percentile of the delays."""
        found = sorted(self.delays())
        return found[int(len(found) * 0.95)] * 1000 if found else float("nan")


def _hal(env: dict[str, str], cwd: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "hal9999", *args], cwd=cwd, env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip


def make_repo(root: Path) -> Path:
    """A tiny git repository to run tasks on."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    (repo / "README").write_text("load\n")
    git = ["git", "-c", "user.name=l", "-c", "user.email=l@l"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    return repo


async def settled_feed(store: Store, after: int, tasks: int, timeout: float = 30) -> list[int]:
    """The ``gseq`` of every event after ``after`` (hive's too) once every task's
    ``task_end`` is in the feed and two reads 0.5 s apart agree: a task's status turns
    terminal before its ``task_end`` is written and indexed, so the feed read at that
    moment can still be a few events short."""
    deadline = time.monotonic() + timeout
    last: list[int] | None = None
    while True:
        rows = await asyncio.to_thread(store.feed_after, after, limit=10**7)
        now = [r.gseq for r in rows]
        ended = sum(1 for r in rows if r.type == "task_end")
        if (ended >= tasks and now == last) or time.monotonic() > deadline:
            return now
        last = now
        await asyncio.sleep(0.5)


async def sse_load(
    root: Path, *, clients: int, tasks: int, lines: int, interval: float = 0.05,
    provider: str = "bwrap",
) -> LoadResult:  # fmt: skip
    """``tasks`` tasks each print ``lines`` stamped lines while ``clients`` SSE clients
    follow every event; returns what each client got once every task has ended."""
    repo = make_repo(root)
    home = root / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(home), XDG_CONFIG_HOME=str(root / "xdg"), HAL_PROVIDER=provider,
               HAL_PROCESS_MANAGER="direct", HAL_MAX_CONCURRENT=str(tasks),
               HAL_BWRAP_MAX_POOL_SIZE=str(tasks))  # fmt: skip
    await asyncio.to_thread(_hal, env, repo, "serve", "--detach")
    files = DaemonFiles(home)
    info, token = files.running(), files.read_token()
    assert info is not None and token is not None
    api = DaemonClient(info, token)
    store = Store.open(home)
    try:
        start = await asyncio.to_thread(store.last_gseq)
        url = f"http://127.0.0.1:{info.port}/v1/events/stream?after={start}"
        until = asyncio.Event()
        followers = [Client() for _ in range(clients)]
        running = []
        for follower in followers:  # one after the other, as tabs open (not a SYN flood)
            running.append(asyncio.create_task(follower.run(url, token, until)))
            await asyncio.wait_for(follower.connected.wait(), 10)
        cpu_before = cpu_seconds(info.pid)
        began = time.monotonic()
        body = {"prompt": "x", "agent": printing_agent(lines, interval), "cwd": str(repo)}
        await asyncio.gather(*(api.call("POST", "/v1/tasks", body) for _ in range(tasks)))
        while await asyncio.to_thread(store.list_tasks, status=ACTIVE, limit=1):
            await asyncio.sleep(0.2)
        expected = await settled_feed(store, start, tasks)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            len(c.ids) < len(expected) and not c.error for c in followers
        ):
            await asyncio.sleep(0.1)
        seconds = time.monotonic() - began
        await asyncio.sleep(0.3)  # a duplicate would arrive now
        until.set()
        await asyncio.gather(*running)
        rss = rss_mib(info.pid)
        cpu = cpu_seconds(info.pid) - cpu_before
        succeeded = sum(1 for t in store.list_tasks() if t.status == "succeeded")
    finally:
        store.close()
        await asyncio.to_thread(_hal, env, repo, "serve", "--stop")
    return LoadResult(expected, followers, rss, seconds, succeeded, cpu)
