"""``hal serve`` serves each hive agent's MCP socket (agents spawned while it runs too), and
``run_task`` hands a sub-task to the daemon's scheduler: it runs in its own sandbox and
``task_result`` brings back its patch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from tests.cli import conftest as cli
from tests.hive.mcp_client import call, connect
from tests.support.daemon import poll
from tests.support.hal import Hal

from hal9999.hive import broker
from hal9999.hive.mcp.channel import McpPaths
from hal9999.hive.store import AgentRecord, insert_agent
from hal9999.store import Store

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

demo_repo, hal, hal_env = cli.demo_repo, cli.hal, cli.hal_env  # the CLI tests' fixtures


@pytest.fixture
def served(hal: Hal, hal_env: dict[str, str]) -> Iterator[Path]:
    out = hal("serve", "--detach", "--json")
    assert out.returncode == 0, out.stderr
    yield Path(hal_env["HAL_HOME"])
    stopped = hal("serve", "--stop")
    assert stopped.returncode == 0, stopped.stderr


async def finished_result(agent: Client, task_id: str) -> Any:
    """``task_result`` of ``task_id`` once the task has ended (it has a note while it runs),
    or as it is after 90 s."""
    deadline = time.monotonic() + 90
    while True:
        failed, result = await call(agent, "task_result", id=task_id)
        assert not failed, result
        if "note" not in result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


async def test_the_daemon_serves_agents_and_runs_their_sub_tasks(
    served: Path, demo_repo: Path
) -> None:
    store = Store.open(served)
    now = time.time()
    record = AgentRecord(
        name="alpha", agent="sh agent.sh {{prompt_file}}", provider="bwrap", repo=str(demo_repo),
        created_at=now, updated_at=now,
    )  # fmt: skip
    insert_agent(store, record)  # after the daemon started: it notices within seconds
    sock = McpPaths(served).socket("alpha")
    poll("alpha's MCP socket", sock.exists, timeout=15)
    async with connect(sock) as alpha:
        failed, sent = await call(alpha, "send", to="operator", body="starting a sub-task")
        assert not failed, sent
        failed, started = await call(alpha, "run_task", prompt="fix calc")
        assert not failed, started
        result = await finished_result(alpha, started["task"])
    assert result["status"] == "succeeded", result
    assert result["branch_made"] is True, result
    assert "+    return a + b" in result["patch"]
    assert [m.sender for m in broker.inbox(store, "operator")] == ["alpha"]
    store.close()


async def test_task_result_never_hands_over_a_sub_tasks_secret(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # A config secret of the daemon's reaches every sub-task; one that writes it into the
    # checkout is refused, and the patch it leaves in its session is the agent's, secret
    # and all: the agent that started the sub-task gets it masked.
    secret = "hive-" + "Tr0ub4dor&3x"
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999"
    config.mkdir(parents=True)
    (config / "config.toml").write_text('secrets = ["HIVE_PASSWORD"]\n')
    out = hal("serve", "--detach", "--json", env={"HIVE_PASSWORD": secret})
    assert out.returncode == 0, out.stderr
    home = Path(hal_env["HAL_HOME"])
    store = Store.open(home)
    try:
        now = time.time()
        record = AgentRecord(
            name="alpha", agent="sh -c 'echo \"$HIVE_PASSWORD\" > leaked.txt'",
            provider="bwrap", repo=str(demo_repo), created_at=now, updated_at=now,
        )  # fmt: skip
        insert_agent(store, record)
        sock = McpPaths(home).socket("alpha")
        poll("alpha's MCP socket", sock.exists, timeout=15)
        async with connect(sock) as alpha:
            failed, started = await call(alpha, "run_task", prompt="leak it")
            assert not failed, started
            result = await finished_result(alpha, started["task"])
    finally:
        store.close()
        stopped = hal("serve", "--stop")
        assert stopped.returncode == 0, stopped.stderr
    assert "secret" in result.get("error", ""), result
    assert secret not in str(result)
    assert "+[REDACTED]" in result["patch"]


async def test_a_sub_task_never_starts_from_what_the_agent_was_not_given(
    served: Path, demo_repo: Path
) -> None:
    # The operator's stash (work never committed: the snapshots every sandbox borrows are
    # pruned of it), another agent's branch and another task's result are not the agent's:
    # a sub-task from one of them was cloned from the source whole, and its patch (files
    # copied out of that checkout) came back to the agent. Its own branches and the
    # repository's stay open.
    import subprocess

    git = ["git", "-C", str(demo_repo), "-c", "user.name=op", "-c", "user.email=op@localhost"]
    (demo_repo / "private.txt").write_text("operator-stash-note\n")
    subprocess.run([*git, "add", "private.txt"], check=True)
    subprocess.run([*git, "stash"], check=True, capture_output=True)
    subprocess.run([*git, "checkout", "-q", "-b", "hal/agent/beta"], check=True)
    (demo_repo / "private.txt").write_text("beta-private-work\n")
    subprocess.run([*git, "add", "private.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "beta's work"], check=True)
    subprocess.run([*git, "checkout", "-q", "main"], check=True)
    store = Store.open(served)
    now = time.time()
    record = AgentRecord(
        name="alpha", agent="sh -c 'cat private.txt > leaked.txt || echo none > leaked.txt'",
        provider="bwrap",
        repo=str(demo_repo), created_at=now, updated_at=now,
    )  # fmt: skip
    insert_agent(store, record)
    sock = McpPaths(served).socket("alpha")
    poll("alpha's MCP socket", sock.exists, timeout=15)
    stash = subprocess.run([*git, "rev-parse", "stash"], capture_output=True, text=True).stdout
    try:
        async with connect(sock) as alpha:
            for ref in ("stash", "refs/stash", "stash@{0}", stash.strip(), "hal/agent/beta"):
                failed, said = await call(alpha, "run_task", prompt="copy it", ref=ref)
                assert failed and "not yours to start from" in str(said), (ref, said)
            failed, started = await call(alpha, "run_task", prompt="copy it", ref="main")
            assert not failed, started
            result = await finished_result(alpha, started["task"])
    finally:
        store.close()
    assert result["status"] == "succeeded", result
    assert "+none" in result["patch"] and "operator-stash-note" not in str(result)
    assert "beta-private-work" not in str(result)
