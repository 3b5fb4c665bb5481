"""A real two-node Ray cluster on this machine for the ``ray`` tests: a head and a worker
started with ``ray start`` (no dashboard, no usage stats), told apart by their custom
resources ``hal_node_head`` and ``hal_node_w1``. Every process of the cluster carries the
cluster's own temp dir in its command line, which is how it is stopped (and how the
worker's raylet is found to be killed), never by name: other Ray processes are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

CAPACITY = 12
"""Sandboxes each node takes (its ``hal_node_*`` resource)."""
COMMON = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
          "--object-store-memory", str(80 << 20), "--include-log-monitor=false"]  # fmt: skip
"""``ray start`` options of every node: loopback, small, no usage stats, no log monitor (it
pushes the node's worker logs to drivers, and hal's driver asks for none: ``log_to_driver=
False``; it polled the logs every 0.1 s, ~1.4 % of a core a node for the run's length, and
a killed node's went on)."""
ATTEMPTS = 3
"""Tries to start a node."""


def missing_ray() -> str | None:
    """Why the Ray tests cannot run here (None when they can)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (uv sync: it is in the dev group)"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pids_with(text: str, *, open_files: bool = False) -> list[int]:
    # Argument list entries end in NUL, so a port is matched whole. Ray's agents rename
    # themselves (``ray::DashboardAgent``), so with ``open_files`` a process holding a file
    # under ``text`` (its logs) counts too.
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
                continue
            if open_files and any(
                os.readlink(f"/proc/{entry}/fd/{fd}").startswith(text)
                for fd in os.listdir(f"/proc/{entry}/fd")
            ):
                found.append(int(entry))
    return found


@dataclass
class RayCluster:
    """A running head + worker; ``address`` is the GCS's ``host:port``."""

    address: str
    temp_dir: Path
    worker_port: int
    node_dir: Path
    added: dict[str, int] = field(default_factory=dict)
    """Nodes started for the running test (its ``ray_node`` marks): name -> raylet port."""
    failed: dict[str, str] = field(default_factory=dict)
    """The running test's nodes that did not start: name -> why."""

    def settings(self, **extra: object) -> dict[str, object]:
        """``[providers.ray]`` settings for this cluster."""
        return {"address": self.address, "node_dir": str(self.node_dir),
                "call_timeout_s": 30} | extra  # fmt: skip

    def add_worker(self, name: str, capacity: int) -> int:
        """Start one more worker node with resource ``hal_node_<name>``; its raylet's port."""
        env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
        for attempt in range(1, ATTEMPTS + 1):
            port = _free_port()
            try:
                _ray_start(["--address", self.address, "--node-manager-port", str(port),
                            *COMMON, "--resources", f'{{"hal_node_{name}": {capacity}}}'],
                           env)  # fmt: skip
                return port
            except RuntimeError:
                # Ray gives a raylet 30 s (fixed) to register: a loaded machine misses it.
                self.kill_worker(port)
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def node_port(self, name: str) -> int:
        """The raylet port of node ``name``, started for this test by its ``ray_node``
        mark (:func:`start_marked_nodes`)."""
        import pytest

        if name in self.failed:
            pytest.fail(f"ray node {name} did not start: {self.failed[name]}", pytrace=False)
        if name not in self.added:
            raise AssertionError(f"no node {name!r}: mark the test @pytest.mark.ray_node")
        return self.added[name]

    def kill_worker(self, port: int) -> list[int]:
        """SIGKILL the raylet of the worker node at ``port`` and every process it started
        (its Ray workers, the host actor among them); the rest of the cluster stays."""
        raylets = _pids_with(f"--node_manager_port={port}\0")
        victims = set(raylets)
        for pid in _pids_with(str(self.temp_dir), open_files=True):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                ppid = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
                if ppid in raylets:
                    victims.add(pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return sorted(victims)

    def stop(self) -> None:
        """Kill every process of this cluster (found by its temp dir) and remove its files."""
        for _ in range(3):
            pids = _pids_with(str(self.temp_dir), open_files=True)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        shutil.rmtree(self.node_dir, ignore_errors=True)


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    ray = str(Path(sys.executable).with_name("ray"))
    # A loaded CI machine (2 cores, the whole suite) starts a raylet slowly.
    env = env | {"RAY_raylet_start_wait_time_s": "180"}
    try:
        done = subprocess.run([ray, "start", *args], env=env, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ray start {' '.join(args)} took over 300 s") from exc
    if done.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed: {done.stderr[-2000:]}")


@contextlib.contextmanager
def running_cluster() -> Iterator[RayCluster]:
    """Start the head and the worker on loopback; stop both at the end, whatever happens."""
    # Short: Ray puts unix sockets under it.
    temp_dir = Path(tempfile.mkdtemp(prefix="hray", dir="/tmp"))
    node_dir = Path(tempfile.mkdtemp(prefix="hal-ray-nodes-"))
    port, worker_port = _free_port(), _free_port()
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir, worker_port, node_dir)
    try:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _ray_start(["--head", "--port", str(port), "--include-dashboard=false",
                            "--temp-dir", str(temp_dir), *COMMON,
                            "--resources", f'{{"hal_node_head": {CAPACITY}}}'], env)  # fmt: skip
                break
            except RuntimeError:
                # Ray gives a raylet 30 s (fixed) to register: a loaded machine misses it.
                cluster.stop()
                if attempt == ATTEMPTS:
                    raise
                port = _free_port()
                cluster.address = f"127.0.0.1:{port}"
        cluster.worker_port = cluster.add_worker("w1", CAPACITY)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        cluster.stop()


_SESSION: list[tuple[contextlib.ExitStack, RayCluster]] = []
_FAILED: list[str] = []


def session_cluster() -> RayCluster:
    """The run's cluster, started on first call (from ``pytest_runtest_protocol``). A
    cluster that would not start fails each Ray test with the reason, once tried."""
    import pytest

    if _FAILED:
        pytest.fail(_FAILED[0], pytrace=False)
    if not _SESSION:
        stack = contextlib.ExitStack()
        try:
            _SESSION.append((stack, stack.enter_context(running_cluster())))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _FAILED.append(f"the test Ray cluster did not start: {exc}")
            pytest.fail(_FAILED[0], pytrace=False)
    return _SESSION[0][1]


def stop_session_cluster() -> None:
    """Stop the run's cluster if one was started."""
    while _SESSION:
        stack, _ = _SESSION.pop()
        stack.close()


def start_marked_nodes(item: pytest.Item) -> None:
    """Before the test ``item``'s clock starts: the nodes its ``ray_node(name, capacity)``
    marks ask for, each with its host actor running. On a loaded machine (the suite on two
    workers) ``ray start`` of a node took 14-26 s and its host actor's first answer over 8 s
    (the kill tests' ``call_timeout_s``: the sandbox went to another node); both were in
    the test's 120 s, the start in a thread its event loop's close waits for. A real cluster
    has its nodes up before the tasks come."""
    marks = list(item.iter_markers("ray_node"))
    if not marks or not _SESSION:
        return
    from hal9999.errors import HalError

    cluster = _SESSION[0][1]
    for mark in marks:
        name, capacity = mark.args
        try:
            cluster.added[name] = cluster.add_worker(name, capacity)
            _start_host_actor(cluster, name)
        except (RuntimeError, OSError, subprocess.SubprocessError, HalError) as exc:
            cluster.failed[name] = str(exc)  # the test fails with it (node_port)


def _start_host_actor(cluster: RayCluster, node: str) -> None:
    import asyncio

    from hal9999.providers.ray.provider import RayConfig, RayProvider

    # Found by name (``get_if_exists``) by the test's providers and hal processes, whose
    # settings are the cluster's: the same namespace and node directory.
    config = RayConfig(address=cluster.address, node_dir=str(cluster.node_dir),
                       call_timeout_s=120)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hal-ray-records-") as records:
        asyncio.run(RayProvider(state_dir=Path(records), config=config).actor(node))


def stop_marked_nodes() -> None:
    """After the test: kill the nodes it had (it kills them itself, unless it failed
    first); a live one with the most room would take the next tests' sandboxes."""
    if not _SESSION:
        return
    cluster = _SESSION[0][1]
    for port in cluster.added.values():
        cluster.kill_worker(port)
    cluster.added.clear()
    cluster.failed.clear()


def stop_when_idle(item: pytest.Item) -> None:
    """After the Ray test ``item``: stop the cluster when no Ray test follows in this run,
    rather than keep it to the run's end. In the suite's order the last Ray test
    (tests/providers/test_ray*.py) has ~1,100 tests after it, and a cluster idles at ~2.5 %
    of a core (its raylets and GCS; measured). Between the earlier Ray
    tests it stays: a start costs ~25 s of CPU, as much as ~20 minutes of idling. Not under
    xdist, whose workers get their tests as they go."""
    if hasattr(item.config, "workerinput"):
        return
    items = item.session.items
    try:
        at = items.index(item)
    except ValueError:
        return
    if not any(i.get_closest_marker("ray") for i in items[at + 1 :]):
        stop_session_cluster()
