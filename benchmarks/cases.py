"""The measurements. Each returns a :class:`Result`: the figure, its baseline and target."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks.profile import (
    become_subreaper,
    children_cpu_ms,
    count_spawns,
    daemon_cpu_ms,
)
from hal9999.events.log import EventLog
from hal9999.events.models import Output
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.process.forkserver import reap_exited
from hal9999.providers.base import Provider
from hal9999.providers.bwrap.provider import BwrapProvider
from hal9999.server.client import DaemonClient
from hal9999.spec import ArgvCommand, Bind, SandboxSpec
from hal9999.store import Store
from hal9999.tasks.mirror import OBJECTS_LINK, OBJECTS_TARGET
from hal9999.tasks.service import INDEX_BATCH

BARE_BWRAP = [
    "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--", "true",
]  # fmt: skip
TRUE = ArgvCommand(argv=("true",))


@dataclass
class Result:
    """One row of the table."""

    name: str
    value: float
    unit: str
    baseline: str
    ratio: str
    target: str
    met: bool
    note: str = ""


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def bare_bwrap() -> None:
    """One bare ``bwrap ... true``."""
    proc = await asyncio.create_subprocess_exec(*BARE_BWRAP)
    await proc.wait()


def task_like_spec(root: Path, n: int) -> SandboxSpec:
    """A spec shaped like a task's (workspace, home, input and the objects binds)."""
    session = root / f"s{n}"
    for name in ("workspace", "home", "input", OBJECTS_LINK):
        (session / name).mkdir(parents=True, exist_ok=True)
    return SandboxSpec(
        provider="bwrap",
        workspace=session / "workspace",
        binds=(
            Bind(source=session / "home", target="/home/hal", read_only=False),
            Bind(source=session / "input", target="/hal", read_only=True),
            Bind(source=session / OBJECTS_LINK, target=OBJECTS_TARGET),
        ),
    )


async def sandbox_cases(runs: int) -> list[Result]:
    """Warm acquire + first command, and cold create + first command, against bare bwrap."""
    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    provider = BwrapProvider(state_dir=root / "state")
    settings = ProviderSettings(max_size=4)
    pool = WarmPool(
        providers=lambda n: cast(Provider, provider),
        settings=lambda n: settings,
        slots=SlotDir(root / "slots"),
    )
    await bare_bwrap()  # page cache
    bare = await timed(bare_bwrap, runs)
    counter = iter(range(10**6))
    await pool.warm(task_like_spec(root, next(counter)), 1)

    # The session's directories are the task's, made before it claims a sandbox: made here
    # before each measured claim, outside the figure (as bare bwrap's are).
    async def warm_once() -> None:
        lease = await pool.claim(spec)
        await lease.sandbox.exec(TRUE)
        leases.append(lease)

    leases: list[Any] = []
    warm_samples, acquire_samples = [], []
    for _ in range(runs):
        spec = task_like_spec(root, next(counter))
        warm_samples.append(await timed(warm_once, 1))
        await pool.release(leases.pop())  # reset happens off the measured path
        spec = task_like_spec(root, next(counter))
        start = time.perf_counter()
        leases.append(await pool.claim(spec))
        acquire_samples.append((time.perf_counter() - start) * 1000)
        await pool.release(leases.pop())
    warm = statistics.median(warm_samples)
    acquire = statistics.median(acquire_samples)

    async def cold_once() -> None:
        box = await provider.create(spec)
        await box.exec(TRUE)
        created.append(box.id)

    created: list[str] = []
    box = await provider.create(task_like_spec(root, next(counter)))
    created.append(box.id)
    cold_samples = []
    for _ in range(runs):
        spec = task_like_spec(root, next(counter))
        cold_samples.append(await timed(cold_once, 1))
    cold = statistics.median(cold_samples)
    exec_only = await timed(lambda: box.exec(TRUE), runs)
    for sandbox_id in created:
        await provider.destroy(sandbox_id)
    await pool.drain()
    shutil.rmtree(root, ignore_errors=True)
    return [
        Result("warm acquire + first command", warm, "ms", f"bare bwrap {bare:.1f} ms",
               f"{warm / bare:.2f}x", "<= 1.5x", warm / bare <= 1.5),
        Result("cold create + first command", cold, "ms", f"bare bwrap {bare:.1f} ms",
               f"{cold / bare:.2f}x", "<= 2.5x", cold / bare <= 2.5),
        Result("  of which: warm acquire alone", acquire, "ms", "-", "-", "-", True,
               "pool bookkeeping, re-pointing the slot, a fresh handle"),
        Result("  of which: bwrap provider exec of true", exec_only, "ms",
               f"bare bwrap {bare:.1f} ms", f"{exec_only / bare:.2f}x", "-", True,
               "launcher sh (cgroup, file size), curated /etc view, session binds, hal-drop"),
    ]  # fmt: skip


def make_repo(root: Path) -> Path:
    """A tiny git repository to run tasks on."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    (repo / "README").write_text("bench\n")
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    return repo


def hal_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for hal subprocesses with a private home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), HAL_PROVIDER="bwrap")
    env.update(extra)
    return env


async def hal(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, bytes]:
    """Run ``python -m hal9999 ARGS``; its status and stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hal9999", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out


async def start_daemon(env: dict[str, str], cwd: Path) -> DaemonClient:
    """``hal serve --detach`` and a client for it."""
    code, _ = await hal(env, cwd, "serve", "--detach")
    assert code == 0, "hal serve did not start"
    client = DaemonClient.find(Path(env["HAL_HOME"]))
    assert client is not None
    return client


async def hal_run_case(runs: int) -> list[Result]:
    """``hal run`` of a trivial custom agent vs the same command under bwrap directly; with
    the CPU time of every process of a run (the client, the daemon's share, daemonized tmux
    servers) and, from one traced run, the processes it started."""
    become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    repo = make_repo(root)
    bare = await timed(bare_bwrap, runs)
    results = []
    agent = ("run", "--agent", "true {{prompt_file}}")
    for label, extra, serve in (
        ("hal run, in-process", {"HAL_NO_DAEMON": "1"}, False),
        ("hal run, via hal serve", {}, True),
    ):
        home = root / label.replace(" ", "_").replace(",", "")
        env = hal_env(home, **extra)
        daemon: DaemonClient | None = None
        if serve:
            daemon = await start_daemon(env, repo)
        await hal(env, repo, *agent, "warm up")

        async def once(env: dict[str, str] = env) -> None:
            code, _ = await hal(env, repo, *agent, "x")
            assert code == 0

        reap_exited()
        cpu_before = children_cpu_ms() + (sum(daemon_cpu_ms(daemon.info.pid)) if daemon else 0)
        took = await timed(once, runs)
        reap_exited()
        cpu_after = children_cpu_ms() + (sum(daemon_cpu_ms(daemon.info.pid)) if daemon else 0)
        cpu = (cpu_after - cpu_before) / runs
        spawned = ""
        if not serve:  # the daemon's share is traced by the throughput case
            argv = [sys.executable, "-m", "hal9999", *agent, "traced"]
            spawns = await asyncio.to_thread(count_spawns, argv, env, repo)
            spawned = f"; {spawns.per(1)}" if spawns else ""
        if serve:
            await hal(env, repo, "serve", "--stop")
            reap_exited()
        over = took - bare
        ratio = f"+{over:.0f} ms"
        results.append(
            Result(label, took, "ms", f"bwrap true {bare:.1f} ms; CPU/run {cpu:.0f} ms{spawned}",
                   ratio, "<= +100 ms", over <= 100)
        )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    return results


def make_large_repo(root: Path, mib: int) -> Path:
    """A repository whose object store holds about ``mib`` MiB (incompressible files over
    a few commits)."""
    repo = root / "large"
    repo.mkdir(parents=True)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    for n in range(max(1, mib // 4)):
        (repo / "data.bin").write_bytes(os.urandom(4 << 20))
        subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
        subprocess.run([*git, "commit", "-qm", f"c{n}"], cwd=repo, check=True)
    return repo


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


async def large_repo_case(runs: int, mib: int = 64) -> list[Result]:
    """``hal run`` (in-process) of a trivial agent on a repository of ``mib`` MiB against
    the same on a one-file repository, and what one task's checkout writes of git objects:
    a checkout borrows the source snapshot's objects instead of copying them."""
    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    small, large = make_repo(root), make_large_repo(root, mib)
    env = hal_env(root / "home", HAL_NO_DAEMON="1")
    agent = ("run", "--agent", "true {{prompt_file}}")
    figures = {}
    for repo in (small, large):
        first = time.perf_counter()
        code, _ = await hal(env, repo, *agent, "warm up")  # the first makes the snapshot
        assert code == 0
        first_ms = (time.perf_counter() - first) * 1000

        async def once(repo: Path = repo) -> None:
            code, _ = await hal(env, repo, *agent, "x")
            assert code == 0

        figures[repo] = (await timed(once, runs), first_ms)
    sessions = sorted((root / "home" / "sessions").iterdir(), key=lambda p: p.stat().st_mtime)
    checkout = tree_bytes(sessions[-1] / "workspace" / ".git" / "objects")
    source = tree_bytes(large / ".git" / "objects")
    shutil.rmtree(root, ignore_errors=True)
    took, first_ms = figures[large]
    base = figures[small][0]
    return [
        Result(f"hal run, {mib} MiB repository", took, "ms",
               f"one-file repository {base:.1f} ms; first task (makes the snapshot) "
               f"{first_ms:.0f} ms; git objects written per checkout {checkout / 1024:.0f} KiB "
               f"(the source has {source / 2**20:.0f} MiB)", f"{took - base:+.0f} ms", "-", True),
    ]  # fmt: skip


def events_case(count: int) -> list[Result]:
    """Events appended to the JSONL log and indexed in the store, per second."""
    root = Path(tempfile.mkdtemp(prefix="hal-bench-"))
    store = Store.open(root)
    # As a task's runs record them (TaskService.event_log): index rows batched.
    log = EventLog(root / "events.jsonl", "benchtask", store=store, index_batch=INDEX_BATCH)
    start = time.perf_counter()
    for n in range(count):
        log.emit(Output(text=f"line {n}\n"))
    log.close()
    rate = count / (time.perf_counter() - start)
    indexed = store.event_count("benchtask")
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return [
        Result("events appended + indexed", rate, "events/s", f"{indexed} indexed", "-",
               ">= 50k/s", rate >= 50_000 and indexed == count)
    ]  # fmt: skip


def machine() -> str:
    """A one-line description of where the figures were measured."""
    cpus = os.cpu_count()
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpus} CPUs, Python {sys.version.split()[0]}, {bwrap}"
