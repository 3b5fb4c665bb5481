"""The daemon's API answers while another process holds the database's write lock: a listing
or a creation waits for it in a thread, and so do a run's own writes as it starts and ends.
(Moved from tests/cli/test_daemon.py.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.daemon import wait_status
from tests.support.hal import Hal

from hal9999.server.client import DaemonClient

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


@pytest.mark.usefixtures("daemon")
def test_a_held_database_write_lock_does_not_stall_the_daemon_api(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    home = Path(hal_env["HAL_HOME"])
    # A task whose runner died: listing it writes (it is marked interrupted), which must
    # wait for the lock, but in a thread, not on the daemon's event loop.
    task = json.loads(hal("run", "--detach", "--agent", "true {{prompt_file}}", "x",
                          "--json").stdout)  # fmt: skip
    wait_status(hal, task["id"], {"succeeded"})
    dead = subprocess.Popen(["true"])
    dead.wait()
    db = sqlite3.connect(home / "hal.db", isolation_level=None)
    db.execute("UPDATE tasks SET status = 'running', runner_pid = ? WHERE id = ?",
               (dead.pid, task["id"]))  # fmt: skip
    holder = sqlite3.connect(home / "hal.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        client = DaemonClient.find(home)
        assert client is not None

        async def probe() -> tuple[float, float]:
            listing = asyncio.create_task(client.call("GET", "/v1/tasks"))
            body = {"prompt": "x", "agent": "true {{prompt_file}}", "cwd": str(demo_repo)}
            creating = asyncio.create_task(client.call("POST", "/v1/tasks", body))
            await asyncio.sleep(0.5)  # the listing and the creation now wait for the lock
            start = time.monotonic()
            await client.call("GET", "/v1/health")
            await client.call("GET", "/v1/status")
            answered = time.monotonic() - start
            holder.execute("ROLLBACK")
            await listing
            await creating
            return answered, time.monotonic() - start

        answered, listed = asyncio.run(probe())
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        db.close()
    assert answered < 1.0, f"the API was stalled {answered:.1f}s behind a database lock"
    assert listed < 10


@pytest.mark.usefixtures("daemon")
def test_a_task_in_flight_rides_out_a_held_database_write_lock(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The runner's own writes (runner_pid, sandbox_id, base_commit as it starts; the state,
    # files_changed and the sandbox's release as it ends) wait for another process's write
    # lock in threads: the daemon's API keeps answering while they wait.
    home = Path(hal_env["HAL_HOME"])
    client = DaemonClient.find(home)
    assert client is not None
    # Many files: collecting them takes long enough to be caught in the act.
    agent = "sh -c 'sleep 1; for i in $(seq 2000); do echo $i > f$i; done'"
    body = {"prompt": "x", "agent": agent, "cwd": str(demo_repo)}
    holder = sqlite3.connect(home / "hal.db", isolation_level=None)

    async def worst_health_while_locked(seconds: float) -> float:
        """Hold the write lock for ``seconds``; the slowest /v1/health answer meanwhile."""
        holder.execute("BEGIN IMMEDIATE")
        worst = 0.0
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                start = time.monotonic()
                await client.call("GET", "/v1/health")
                worst = max(worst, time.monotonic() - start)
                await asyncio.sleep(0.05)
        finally:
            holder.execute("ROLLBACK")
        return worst

    async def run() -> tuple[str, float, float]:
        task = await client.call("POST", "/v1/tasks", body)
        starting = await worst_health_while_locked(3)  # the run starts meanwhile
        deadline = time.monotonic() + 30
        while (await client.call("GET", f"/v1/tasks/{task['id']}"))["status"] != "collecting":
            assert time.monotonic() < deadline, "the task never came to collecting"
            await asyncio.sleep(0.01)
        ending = await worst_health_while_locked(3)  # the run ends meanwhile
        return task["id"], starting, ending

    try:
        task_id, starting, ending = asyncio.run(run())
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert starting < 1.0, f"the API was stalled {starting:.1f}s while a run started"
    assert ending < 1.0, f"the API was stalled {ending:.1f}s while a run ended"
    done = wait_status(hal, task_id, {"succeeded", "failed", "interrupted"})
    assert done["status"] == "succeeded", done
    assert done["files_changed"] == 2000 and done["sandbox_id"] is None
    assert done["base_commit"] and done["runner_pid"] is None
